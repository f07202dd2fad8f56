"""The web runtime in a real headless Chromium against the Python StagedRuntime.

One tiny random model is exported with ``web=True`` (batch-1 graphs) and
served by ``keras_dmpo.web.server`` on 127.0.0.1; a small Node script
(tests/web/browser.mjs, puppeteer-core) drives the system's Chromium
through the demo page. One browser session visits every page (the good
bundle with and without cross-origin isolation, then three tampered
bundles) and the tests below read what it saw. node, npm or Chromium
missing fails the tests with one line saying so.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import web_checks
from export_checks import float_export, load_manifest

from keras_dmpo.export.web_samples import write_web_samples
from keras_dmpo.litert import StagedRuntime
from keras_dmpo.litert.manifest import manifest_policy
from keras_dmpo.policy import ExitPolicy
from keras_dmpo.web.bundle_check import DYNAMIC_BATCH_MESSAGE

# The browser runs the JavaScript runtime, not Keras: one backend is enough
# to compare it with the numpy StagedRuntime, and TensorFlow exports in-process.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="web tests run under KERAS_BACKEND=tensorflow only"
)

NUM_SAMPLES = 12
# LiteRT.js and ai_edge_litert agree to ~1e-6; thresholds (and, for
# patience, the top two classes) are kept this far from every score so that
# such a difference cannot move an image to another exit.
MARGIN = 1e-4


def spread_thresholds(scores, fractions):
    """One threshold per early exit, in the widest gap between that exit's
    scores near the rank where ``fraction`` of the images would leave."""
    thresholds = []
    for exit_scores, fraction in zip(scores, fractions):
        ordered = np.sort(exit_scores)[::-1]
        target = int(round(fraction * len(ordered)))
        window = range(max(1, target - 3), min(len(ordered), target + 4))
        best = max(window, key=lambda i: ordered[i - 1] - ordered[i])
        thresholds.append(float((ordered[best - 1] + ordered[best]) / 2))
    return thresholds + [0.0]


def policies_per_criterion(reference):
    """The manifest's policy and three overrides (``{name: ExitPolicy or None}``),
    each checked to keep MARGIN from every decision."""
    probabilities = np.stack([reference[f"exit_{k}"] for k in (1, 2, 3)])
    chosen = {"confidence (the manifest's)": None}
    for name, criterion, temperatures in [
        ("confidence with temperatures", "confidence", [2.0, 0.5, 1.0]),
        ("entropy", "entropy", None),
    ]:
        template = ExitPolicy(criterion, temperatures=temperatures, num_exits=3)
        scores = template.all_scores(probabilities)
        policy = template.replace(thresholds=spread_thresholds(scores[:2], [0.4, 0.5]))
        gaps = np.abs(scores[:2] - np.asarray(policy.thresholds[:2])[:, None])
        assert gaps.min() > MARGIN, f"{name}: a score lies {gaps.min():.1e} from its threshold"
        chosen[name] = policy
    top_two = np.sort(probabilities, axis=-1)[..., -2:]
    assert (top_two[..., 1] - top_two[..., 0]).min() > MARGIN, "near-tied labels: patience could flip"
    chosen["patience"] = ExitPolicy("patience", patience=2, num_exits=3)
    return chosen


def _edited(bundle, tmp_path, name, edit):
    target = tmp_path / name
    shutil.copytree(bundle, target)
    manifest = load_manifest(target)
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return str(target)


def _bad_name(manifest):
    manifest["stages"][1]["file"] = "../stage_2.tflite"


def _bad_hash(manifest):
    manifest["stages"][0]["sha256"] = "0" * 64


def _dynamic(manifest):
    for entry in manifest["stages"] + [manifest["monolithic"]]:
        for spec in entry["inputs"] + entry["outputs"]:
            spec["shape"][0] = -1


EVALUATE = """(async () => {
  const page = window.kerasDmpo;
  const data = %s;
  const runs = [];
  for (const policy of data.policies) runs.push(await page.runTensors(data.tensors, policy));
  // Every LiteRT tensor fed to or returned by a graph must be deleted when
  // predict returns (the wasm heap is not garbage collected).
  const graphs = [...page.runtime._stages, page.runtime._monolithic];
  const tensors = [];
  for (const graph of graphs) {
    const run = graph.runner.run.bind(graph.runner);
    graph.runner.run = async (inputs) => {
      const outputs = await run(inputs);
      tensors.push(...Object.values(inputs), ...Object.values(outputs));
      return outputs;
    };
  }
  const deepest = { ...data.policies[1], thresholds: [1, 1, 0], calibration: null };
  await page.runTensors(data.tensors.slice(0, 4), deepest);
  await page.runMonolithic(data.tensors.slice(0, 2));
  for (const graph of graphs) delete graph.runner.run;
  // Predictions started together run one after the other, with the same answers.
  const together = await Promise.all(
    data.tensors.slice(0, 6).map((t) => page.runtime.predict(Float32Array.from(t))),
  );
  return {
    together: together.map((p) => [p.exitIndex, Array.from(p.probabilities)]),
    freed: { tensors: tensors.length, deleted: tensors.filter((t) => t.deleted).length },
    runs,
    monolithic: await page.runMonolithic(data.tensors),
    rule: (%s)(page.api, data.ruleCases),
    samples: page.results,
    cards: document.querySelectorAll('#sample-grid .card').length,
    barSegments: document.getElementById('exit-bar').children.length,
    threads: page.runtime.threads,
    numThreads: page.runtime.numThreads,
  };
})()"""


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Everything the browser saw, and the Python runtime's answers to compare."""
    node, modules = web_checks.tools()
    tmp_path = tmp_path_factory.mktemp("web_browser")
    exported, reference = float_export(tmp_path_factory, web=True)
    bundle = str(tmp_path / "bundle")
    shutil.copytree(exported, bundle)
    images = reference["images"]
    labels = np.arange(NUM_SAMPLES) % 5
    write_web_samples(bundle, images[:NUM_SAMPLES], labels=labels)

    runtime = StagedRuntime(bundle)
    policies = policies_per_criterion(reference)
    python = {}
    for name, policy in policies.items():
        runtime.policy = manifest_policy(runtime.manifest) if policy is None else policy
        python[name] = runtime.predict(images)
    runtime.policy = manifest_policy(runtime.manifest)
    tensors = runtime.preprocess(images)
    rule_cases = web_checks.rule_cases()
    data = {
        "tensors": tensors.reshape(len(tensors), -1).tolist(),
        "policies": [None if p is None else p.to_dict() for p in policies.values()],
        "ruleCases": [{"policy": c["policy"], "probabilities": c["probabilities"]} for c in rule_cases],
    }
    evaluate = EVALUATE % (json.dumps(data), web_checks.assign_cases_source())
    tampered = {
        "bad_name": _edited(bundle, tmp_path, "bad_name", _bad_name),
        "bad_hash": _edited(bundle, tmp_path, "bad_hash", _bad_hash),
        "dynamic": _edited(bundle, tmp_path, "dynamic", _dynamic),
    }
    # An image of another size than the model's, for the drop zone (resized by the browser).
    from PIL import Image

    upload = str(tmp_path / "mine.png")
    Image.fromarray(np.repeat(np.repeat(images[0], 2, axis=0), 3, axis=1)).save(upload)
    urls = {}
    with (
        web_checks.serving(bundle, modules) as isolated,
        web_checks.serving(bundle, modules, isolation=False) as single,
        web_checks.serving(tampered["bad_name"], modules) as bad_name,
        web_checks.serving(tampered["bad_hash"], modules) as bad_hash,
        web_checks.serving(tampered["dynamic"], modules) as dynamic,
    ):
        urls = {"isolated": isolated, "single": single, "bad_name": bad_name, "bad_hash": bad_hash}
        urls["dynamic"] = dynamic
        single_check = f"window.kerasDmpo.runTensors({json.dumps(data['tensors'][:4])}, null)"
        visits = [
            {"url": isolated, "evaluate": evaluate, "upload": upload},
            {"url": single, "evaluate": single_check, "waitSamples": False},
            {"url": bad_name, "waitSamples": False},
            {"url": bad_hash, "waitSamples": False},
            {"url": dynamic, "waitSamples": False},
        ]
        seen = web_checks.visit(node, modules, visits, tmp_path)
    pages = dict(zip(urls, seen))
    return {
        "pages": pages,
        "python": python,
        "policies": policies,
        "rule_cases": rule_cases,
        "bundle": bundle,
        "images": images,
        "labels": labels,
    }


def test_same_exits_labels_and_probabilities_as_python_per_criterion(session):
    page = session["pages"]["isolated"]
    assert page["ready"] == {"ok": True}
    for (name, _), js in zip(session["policies"].items(), page["value"]["runs"]):
        expected = session["python"][name]
        exits = np.array([r["exitIndex"] for r in js])
        np.testing.assert_array_equal(exits, expected["exit_index"], err_msg=name)
        np.testing.assert_array_equal([r["label"] for r in js], expected["labels"], err_msg=name)
        np.testing.assert_array_equal([r["flops"] for r in js], expected["flops"], err_msg=name)
        diff = np.abs(np.array([r["probabilities"] for r in js]) - expected["probabilities"]).max()
        print(
            f"browser vs Python StagedRuntime, {name}: exits {np.bincount(exits, minlength=3).tolist()}, "
            f"max |dp| {diff:.1e}"
        )
        assert diff <= 1e-4, name
        # Each criterion sends images to more than one exit.
        assert len(set(exits.tolist())) >= 2, name


def test_every_litert_tensor_is_freed(session):
    freed = session["pages"]["isolated"]["value"]["freed"]
    # 4 images through 3 stages (input, probabilities, tokens each; no tokens
    # out of the last) and 2 through the monolithic graph (input, probabilities).
    assert freed == {"tensors": 4 * 8 + 2 * 2, "deleted": 4 * 8 + 2 * 2}


def test_predictions_started_together_give_the_same_answers(session):
    value = session["pages"]["isolated"]["value"]
    alone = [[r["exitIndex"], r["probabilities"]] for r in value["runs"][0][:6]]
    assert value["together"] == alone


def test_monolithic_graph_matches(session):
    page = session["pages"]["isolated"]
    runtime = StagedRuntime(session["bundle"])
    expected = runtime.predict_monolithic(session["images"])["probabilities"]
    diff = np.abs(np.array(page["value"]["monolithic"]) - expected).max()
    print(f"browser vs Python monolithic graph: max |dp| {diff:.1e}")
    assert diff <= 1e-4


def test_exit_rule_vectors_in_the_page(session):
    worst = web_checks.check_rule_results(
        session["rule_cases"], session["pages"]["isolated"]["value"]["rule"]
    )
    print(f"JS rule in Chromium vs Python: max |score diff| {worst:.1e}")


def test_page_renders_the_samples_without_console_errors(session):
    page = session["pages"]["isolated"]
    value = page["value"]
    assert page["consoleErrors"] == [] and page["pageErrors"] == [] and page["failedRequests"] == []
    assert not page["errorPanel"]["visible"]
    assert value["cards"] == NUM_SAMPLES and len(value["samples"]) == NUM_SAMPLES
    assert value["barSegments"] >= 2
    # Cross-origin isolated: LiteRT.js runs its threaded wasm.
    assert page["crossOriginIsolated"] and value["threads"] is True
    # The PNG samples, decoded and preprocessed by the browser, answer as the
    # Python runtime does on the same pixels read with Pillow.
    from PIL import Image

    pixels = np.stack(
        [
            np.asarray(Image.open(os.path.join(session["bundle"], "samples", r["file"])))
            for r in value["samples"]
        ]
    )
    expected = StagedRuntime(session["bundle"]).predict(pixels)
    np.testing.assert_array_equal([r["exitIndex"] for r in value["samples"]], expected["exit_index"])
    np.testing.assert_array_equal([r["label"] for r in value["samples"]], expected["labels"])
    probabilities = np.array([r["probabilities"] for r in value["samples"]])
    assert np.abs(probabilities - expected["probabilities"]).max() <= 1e-4
    assert [r["trueLabel"] for r in value["samples"]] == session["labels"].tolist()
    assert all(r["stagedMs"] > 0 and r["monolithicMs"] > 0 for r in value["samples"])


def test_the_drop_zone_answers_for_an_image_of_another_size(session):
    text = session["pages"]["isolated"]["dropped"]
    assert "mine.png" in text and "FLOPs" in text and "staged" in text, text
    assert "class_" in text  # the top classes by name


def test_without_isolation_it_runs_single_threaded(session):
    page = session["pages"]["single"]
    assert page["ready"] == {"ok": True} and not page["crossOriginIsolated"]
    assert page["consoleErrors"] == [] and page["pageErrors"] == []
    isolated = session["pages"]["isolated"]["value"]["runs"][0][:4]
    assert [r["exitIndex"] for r in page["value"]] == [r["exitIndex"] for r in isolated]
    diff = np.abs(
        np.array([r["probabilities"] for r in page["value"]]) - [r["probabilities"] for r in isolated]
    )
    assert diff.max() <= 1e-5


@pytest.mark.parametrize(
    "name, message",
    [
        ("bad_name", "manifest['stages'][1]['file'] must be a plain file name inside the export directory"),
        ("bad_hash", "sha256 mismatch for 'stage_1.tflite'"),
        ("dynamic", DYNAMIC_BATCH_MESSAGE),
    ],
)
def test_tampered_bundles_are_refused_visibly(session, name, message):
    page = session["pages"][name]
    assert not page["ready"]["ok"] and message in page["ready"]["error"]
    assert page["errorPanel"]["visible"], name
    assert message in page["errorPanel"]["text"]
    assert "The bundle was refused" in page["errorPanel"]["text"]
    assert page["pageErrors"] == []


def test_screenshot_script_writes_a_whole_png(session, tmp_path):
    from keras_dmpo.web.screenshot import main

    web_checks.tools()
    out = tmp_path / "page.png"
    assert main([session["bundle"], str(out), "--width", "800", "--height", "600"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["page.png"]  # no temporary file left
    with pytest.raises(SystemExit):
        main([session["bundle"]])
    assert main([session["bundle"], str(tmp_path / "page.jpg")]) == 2
