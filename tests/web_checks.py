"""Shared helpers of the web tests: the tools, a server in a thread, Node and Chromium.

A missing tool (node, npm, Chromium) FAILS the test with one line saying
what is missing: the web runtime is part of the package, so a machine that
cannot test it must say so rather than skip.
"""

import contextlib
import json
import os
import subprocess
import threading

import pytest

from keras_dmpo.web import JS_DIR, browser, npm_deps
from keras_dmpo.web.server import make_server

TESTS_WEB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
JS_POLICY = os.path.join(JS_DIR, "src", "policy.js")
NODE_TIMEOUT_S = 240


def tools():
    """``(node, node_modules)`` with puppeteer-core, Chromium checked; else fail in one line."""
    try:
        node = browser.find_node()
        browser.find_chromium()
        modules = npm_deps.ensure_node_modules(dev=True)
    except RuntimeError as error:
        pytest.fail(f"web tests cannot run: {error}", pytrace=False)
    return node, modules


@contextlib.contextmanager
def serving(bundle_dir, node_modules, isolation=True, check_bundle=False):
    """A server for ``bundle_dir`` on a free 127.0.0.1 port, in a thread; yields its URL.

    ``check_bundle`` is off by default: the tampered bundles must reach the
    browser, whose refusal is what the tests look at.
    """
    server = make_server(
        bundle_dir, port=0, isolation=isolation, check_bundle=check_bundle, node_modules=node_modules
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_node(node, node_modules, script, payload, tmp_path, name):
    """Run ``tests/web/SCRIPT payload.json`` and parse the JSON line it prints."""
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(payload))
    env = browser.node_environment(node_modules)
    result = subprocess.run(
        [node, os.path.join(TESTS_WEB, script), str(spec)],  # an absolute script stays as it is
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise AssertionError(f"node {script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def visit(node, node_modules, visits, tmp_path, name="visits"):
    """Each ``{"url", "evaluate", ...}`` visited in one headless Chromium (tests/web/browser.mjs)."""
    return run_node(node, node_modules, "browser.mjs", {"visits": visits}, tmp_path, name)


def assign_cases_source():
    """The source of ``assignCases`` in tests/web/rule_vectors.mjs, to run it in the page."""
    with open(os.path.join(TESTS_WEB, "rule_vectors.mjs"), encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("function assignCases")
    return text[start : text.index("\n}\n", start) + 2]


def rule_cases(seed=0):
    """Test vectors of the exit rule, made by the Python code: random
    probabilities and, per criterion, a policy chosen by
    ``keras_dmpo.policy.calibrate`` (or set by hand for the corners), with
    the exits ``ExitPolicy.assign`` gives and the scores ``ExitPolicy.scores``.

    Calibrated thresholds sit at midpoints between observed scores, so the
    last-bit differences between numpy's and V8's ``log``/``exp`` cannot move
    a sample across one.
    """
    import numpy as np

    from keras_dmpo.policy import ExitPolicy, calibrate

    rng = np.random.default_rng(seed)
    k, n, c = 4, 300, 6
    # Like a trained model's exits: deeper ones see the true class more
    # clearly, each sample at its own difficulty, so scores spread over
    # [0, 1] and the calibrated policies use every exit.
    labels = rng.integers(0, c, n)
    difficulty = rng.uniform(0.0, 2.5, size=(n, 1))
    logits = np.stack(
        [rng.normal(size=(n, c)) + np.eye(c)[labels] * difficulty * (0.6 + 0.8 * e) for e in range(k)]
    )
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    flops = [1.0, 2.0, 3.0, 4.0]
    temperatures = [0.5, 1.7, 2.5, 1.0]
    policies = [
        calibrate(probabilities, labels, flops, 4.0, target=0.4, criterion="confidence"),
        calibrate(probabilities, labels, flops, 4.0, 0.5, criterion="confidence", temperatures=temperatures),
        calibrate(probabilities, labels, flops, 4.0, target=0.4, criterion="entropy"),
        calibrate(probabilities, labels, flops, 4.0, 0.6, criterion="entropy", temperatures=temperatures),
        calibrate(
            probabilities, labels, flops, 4.0, target={"max_accuracy_drop": 0.02}, criterion="patience"
        ),
        ExitPolicy("patience", patience=3, num_exits=k),
        ExitPolicy("confidence", thresholds=[0.0, 0.0, 0.0, 0.0]),  # everyone leaves at once
        ExitPolicy("entropy", thresholds=[1.0, 1.0, 1.0, 0.0]),  # only one-hot leaves early
    ]
    cases = [(policy, probabilities) for policy in policies]
    # Corners: one-hot (0·log 0), uniform, ties for the argmax, two classes.
    corners = np.array(
        [
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]],
            [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
            [[0.0, 0.0, 1.0], [0.4, 0.2, 0.4], [0.5, 0.25, 0.25]],
        ]
    )
    for criterion in ("confidence", "entropy"):
        cases.append(
            (ExitPolicy(criterion, thresholds=[0.9, 0.9, 0.0], temperatures=[0.7, 3.0, 1.0]), corners)
        )
    cases.append((ExitPolicy("patience", patience=2, num_exits=3), corners))
    two = rng.dirichlet([0.5, 0.5], size=(2, 50))
    cases.append((ExitPolicy("entropy", thresholds=[0.3, 0.0]), two))
    out = []
    for policy, p in cases:
        scores = None if policy.criterion == "patience" else policy.all_scores(p).tolist()
        out.append(
            {
                "policy": policy.to_dict(),
                "probabilities": p.tolist(),
                "exits": policy.assign(p).tolist(),
                "scores": scores,
            }
        )
    return out


def check_rule_results(cases, results):
    """The JS results (``assignCases``) against the Python ones: the same exits,
    scores within 1e-12. Returns the largest score difference."""
    import numpy as np

    assert len(results) == len(cases)
    worst = 0.0
    for i, (case, result) in enumerate(zip(cases, results)):
        where = f"case {i} ({case['policy']['criterion']})"
        assert result["exits"] == case["exits"], where
        if case["scores"] is None:
            assert result["scores"] is None, where
            continue
        diff = float(np.abs(np.asarray(result["scores"]) - np.asarray(case["scores"])).max())
        assert diff <= 1e-12, f"{where}: scores differ by {diff}"
        worst = max(worst, diff)
    return worst
