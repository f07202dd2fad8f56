"""Every docstring example of the public API runs, on the current backend.

Collected: the docstrings of every public module of ``keras_dmpo`` (no
``_private`` component, no ``__main__``) and of the public classes, functions
and methods defined there -- which covers everything ``keras_dmpo`` and
``keras_dmpo.layers`` export (checked below). An example is either doctest
(``>>>``; the output shown is compared, with ``ELLIPSIS`` and
``NORMALIZE_WHITESPACE``) or a fenced ```` ```python ```` block (run as one
piece; no output compared). An ``Example:`` (or ``Example (...):``) section
with neither fails.

The conventions, as for doctest: an example sees its module's names, plus
``np`` (numpy) and ``keras``; anything else it imports or builds itself, with
small random inputs, no network and no downloads. Each runs in a fresh
temporary working directory with ``keras.utils.set_random_seed(0)``.
"""

import doctest
import importlib
import inspect
import io
import pkgutil
import re
import textwrap

import keras
import numpy as np
import pytest

import keras_dmpo

FENCED = re.compile(r"```python\n(.*?)```", re.S)
# "Example:", "Examples:", "Example (TensorFlow backend):" on a line of their own.
EXAMPLE_SECTION = re.compile(r"^\s*Examples?\b[^\n]*:\s*$", re.M)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.FAIL_FAST

# Examples that are known not to run yet (strict: once one runs, its entry must go).
XFAIL = {}

# Examples (or lines, ``# doctest: +SKIP``) that are not run, and why. Every
# docstring with a skipped line must be listed here, and only those.
NOT_RUN = {
    "keras_dmpo.datasets.load_fashion_mnist": (
        "reads the Fashion-MNIST files (a download or Debian's package); tests marked fashion_mnist cover it"
    ),
    "keras_dmpo.datasets.load_cifar10": (
        "reads a CIFAR-10 copy from disk; test_photo_data.py covers it on synthetic folders and ../shared/data"
    ),
    "keras_dmpo.datasets.load_image_splits": (
        "reads a photo folder from disk; test_photo_data.py covers it on synthetic folders and ../shared/data"
    ),
    "keras_dmpo.archives.unpack_archive": (
        "unpacks an archive from disk; test_photo_data.py covers it on synthetic archives"
    ),
}

# Examples that only run on one backend (e.g. TFLite / ONNX conversion).
ONLY_ON = {
    "keras_dmpo.export.onnx.export_onnx_stage_graphs": "tensorflow",
    "keras_dmpo.export.tflite.export_stage_graphs": "tensorflow",
    "keras_dmpo.export.web_samples.write_web_samples": "tensorflow",
    "keras_dmpo.export.tflite_convert.convert_to_tflite": "tensorflow",
    # These quantize or read a graph they convert first (the converter needs TensorFlow).
    "keras_dmpo.export.quantizer.quantize_flatbuffer": "tensorflow",
    "keras_dmpo.export.quantizer.graph_signature": "tensorflow",
    "keras_dmpo.export.quantizer.calibrate": "tensorflow",
    "keras_dmpo.export.quantizer.repair_signature": "tensorflow",
    "keras_dmpo.export.quantization_report.op_type_counts": "tensorflow",
    "keras_dmpo.export.quantization_report.tensor_errors": "tensorflow",
    "keras_dmpo.export.quantization_report.errors_by_op_type": "tensorflow",
    "keras_dmpo.export.quantization_report.op_type_sensitivity": "tensorflow",
    "keras_dmpo.export.quantization_report.xnnpack_delegation": "tensorflow",
    # Builds its export in-process; the runtime itself is tested on every
    # backend against a TensorFlow-subprocess export (test_litert_runtime.py).
    "keras_dmpo.litert.runtime.StagedRuntime": "tensorflow",
}


def _is_public(dotted):
    return not any(part.startswith("_") for part in dotted.split("."))


def public_modules():
    names = ["keras_dmpo"]
    for info in pkgutil.walk_packages(keras_dmpo.__path__, "keras_dmpo."):
        if _is_public(info.name):
            names.append(info.name)
    return [importlib.import_module(name) for name in names]


def _fenced_examples(test):
    return [
        # One piece: a block may hold several statements, which doctest's
        # "single" mode does not compile; exec() runs it in the test's globals.
        doctest.Example(f"exec(compile({textwrap.dedent(block)!r}, {test.name!r}, 'exec'))\n", "")
        for block in FENCED.findall(test.docstring or "")
    ]


def collect():
    """``{qualified name: doctest.DocTest}`` of every docstring with an example section."""
    finder = doctest.DocTestFinder(exclude_empty=False)
    tests = {}
    for module in public_modules():
        for test in finder.find(module):
            if not _is_public(test.name) or test.name in tests:
                continue
            test.examples = test.examples + _fenced_examples(test)
            if test.examples or EXAMPLE_SECTION.search(test.docstring or ""):
                tests[test.name] = test
    return tests


TESTS = collect()


def _param(name):
    marks = []
    if name in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name]))
    return pytest.param(name, marks=marks, id=name.removeprefix("keras_dmpo."))


@pytest.mark.parametrize("name", [_param(name) for name in sorted(TESTS)])
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    test = TESTS[name]
    assert test.examples, f"{name}: an Example section without a `>>>` or ```python block."
    skipped = [e for e in test.examples if e.options.get(doctest.SKIP)]
    assert bool(skipped) == (name in NOT_RUN), (
        f"{name}: docstring lines marked +SKIP must be listed in NOT_RUN with a "
        "reason (and NOT_RUN may only list docstrings that skip some)."
    )
    if name in ONLY_ON and keras.backend.backend() != ONLY_ON[name]:
        pytest.skip(f"runs on the {ONLY_ON[name]} backend only")
    if len(skipped) == len(test.examples):
        pytest.skip(f"not run: {NOT_RUN[name]}")
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    module_globs = test.globs
    test.globs = {**module_globs, "np": np, "keras": keras}
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    report = io.StringIO()
    try:
        result = runner.run(test, out=report.write, clear_globs=True)
    finally:
        test.globs = module_globs
    if result.failed:
        pytest.fail(f"docstring example of {name} failed:\n{report.getvalue()}", pytrace=False)


def test_exported_names_are_collected():
    """What keras_dmpo and keras_dmpo.layers export lives in a collected module."""
    import keras_dmpo.layers

    collected_modules = {module.__name__ for module in public_modules()}
    exported = [(keras_dmpo, name) for name in keras_dmpo.__all__]
    exported += [(keras_dmpo.layers, name) for name in keras_dmpo.layers.__all__]
    for namespace, name in exported:
        obj = getattr(namespace, name)
        if inspect.ismodule(obj):
            assert obj.__name__ in collected_modules, obj.__name__
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ in collected_modules, f"{name}: {obj.__module__}"


def test_lists_name_collected_docstrings():
    """Stale entries fail: every name in XFAIL, NOT_RUN, ONLY_ON has an example."""
    for listing in (XFAIL, NOT_RUN, ONLY_ON):
        stale = sorted(set(listing) - set(TESTS))
        assert not stale, f"no docstring example (any more) for {stale}"


def test_collector_finds_both_styles_and_empty_sections():
    """The collector itself: doctest, fenced and empty example sections."""

    def doctest_style():
        """Example:

        >>> 1 + 1
        2
        """

    def fenced_style():
        """Example:

        ```python
        x = 1
        assert x == 1
        ```
        """

    def empty_section():
        """Example (on some backend):

        thing(h)
        """

    finder = doctest.DocTestFinder(exclude_empty=False)
    found = {}
    for function in (doctest_style, fenced_style, empty_section):
        (test,) = finder.find(function, function.__name__, globs={})
        test.examples += _fenced_examples(test)
        found[function.__name__] = test
    assert len(found["doctest_style"].examples) == 1
    assert len(found["fenced_style"].examples) == 1
    # test_docstring_example_runs fails a section like this one:
    assert EXAMPLE_SECTION.search(found["empty_section"].docstring)
    assert not found["empty_section"].examples
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    assert runner.run(found["fenced_style"], out=lambda _: None).failed == 0
    found["doctest_style"].examples[0].want = "3\n"  # a wrong output must fail
    assert runner.run(found["doctest_style"], out=lambda _: None).failed == 1
