"""The exit rule in JavaScript (keras_dmpo/web/js/src/policy.js) against Python, in Node.

The test vectors are made here by the Python code (``web_checks.rule_cases``:
random probabilities, calibrated and hand-set policies of every criterion,
the exits ``ExitPolicy.assign`` gives); the browser test runs the same
vectors in the page once more.
"""

import keras
import pytest
import web_checks

# One backend is enough: this checks the JS rule against the numpy one, and
# no Keras code runs.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="web tests run under KERAS_BACKEND=tensorflow only"
)


def test_js_rule_matches_python_in_node(tmp_path):
    node, modules = web_checks.tools()
    cases = web_checks.rule_cases()
    inputs = [{"policy": c["policy"], "probabilities": c["probabilities"]} for c in cases]
    results = web_checks.run_node(node, modules, "rule_vectors.mjs", inputs, tmp_path, "rule_cases")
    worst = web_checks.check_rule_results(cases, results)
    criteria = sorted({c["policy"]["criterion"] for c in cases})
    print(f"JS rule vs Python: {len(cases)} cases ({criteria}), same exits, max |score diff| {worst:.1e}")
    # The vectors exercise every exit and criterion (a test that always
    # answered at the last exit would prove little).
    used = {e for c in cases[:5] for e in c["exits"]}
    assert used == {0, 1, 2, 3}


def test_js_policy_checks_match_python(tmp_path):
    """Malformed policies are refused by both, naming the field."""
    node, modules = web_checks.tools()
    from keras_dmpo.policy import ExitPolicy

    bad = [
        {"criterion": "confidence", "num_exits": 2, "thresholds": [0.5, 1.5]},
        {"criterion": "confidence", "num_exits": 2, "thresholds": [0.5]},
        {"criterion": "confidence", "num_exits": 2, "thresholds": ["0.5", 0.0]},
        {"criterion": "patience", "num_exits": 3, "thresholds": [0.5, 0.5, 0.0]},
        {"criterion": "patience", "num_exits": 3, "thresholds": None, "patience": 4},
        {"criterion": "entropy", "num_exits": 2, "thresholds": None, "patience": 2},
        {"criterion": "entropy", "num_exits": 2, "thresholds": None, "temperatures": [1.0, 0.0]},
        {"criterion": "margin", "num_exits": 2, "thresholds": None},
        {"criterion": "confidence", "num_exits": 2, "thresholds": None, "speed": 1},
        {"criterion": "confidence", "thresholds": None},
        {"criterion": "confidence", "num_exits": 2, "thresholds": None, "calibration": {"budget": 1}},
    ]
    for data in bad:
        with pytest.raises(ValueError):
            ExitPolicy.from_dict(data)
    script = tmp_path / "policy_checks.mjs"
    script.write_text(
        "import { readFile } from 'node:fs/promises';\n"
        f"import {{ ExitPolicy }} from {str(web_checks.JS_POLICY)!r};\n"
        "const cases = JSON.parse(await readFile(process.argv[2], 'utf8'));\n"
        "console.log(JSON.stringify(cases.map((c) => { try { ExitPolicy.fromDict(c); return null; }"
        " catch (e) { return `${e.name}: ${e.message}`; } })));\n"
    )
    messages = web_checks.run_node(node, modules, str(script), bad, tmp_path, "bad_policies")
    for data, message in zip(bad, messages):
        assert message is not None and message.startswith("BundleError: `policy`"), (data, message)
    assert "`thresholds` must be in [0, 1]" in messages[0] and "[1.5]" in messages[0]
    assert "`patience` must be an integer in [2, 3]" in messages[4]
    assert "unknown keys ['speed']" in messages[8]
    assert "Calibration record" in messages[10]
