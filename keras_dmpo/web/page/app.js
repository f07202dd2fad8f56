// The demo page: loads /bundle/, runs the sample images stage by stage,
// shows where each one left, and times the staged run against the
// monolithic graph. window.kerasDmpo is the handle the tests use.

import * as api from 'keras-dmpo-web';

const BUNDLE_URL = '/bundle/';
const SAMPLES_URL = `${BUNDLE_URL}samples/index.json`;

const $ = (id) => document.getElementById(id);

/** One color per exit, from early (green) to late (violet). */
function exitColor(k, numExits) {
  const t = numExits > 1 ? k / (numExits - 1) : 1;
  return `hsl(${Math.round(150 + 120 * t)} 55% ${Math.round(48 - 10 * t)}%)`;
}

const percent = (x) => `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`;
const ms = (x) => (x === null || x === undefined ? '–' : `${x.toFixed(x < 10 ? 2 : 1)} ms`);
const round = (x) => Number(x.toPrecision(3));

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fact(list, term, value) {
  list.append(element('dt', '', term), element('dd', '', value));
}

function showError(error) {
  $('error-message').textContent = error && error.message ? error.message : String(error);
  $('error-panel').hidden = false;
  $('content').hidden = true;
  $('status').textContent = error instanceof api.BundleError ? 'Bundle refused.' : 'Failed.';
  console.error(error);
}

function describePolicy(policy) {
  if (policy.criterion === 'patience') return `patience: ${policy.patience} exits in a row agree`;
  const thresholds = policy.thresholds.slice(0, -1).map(round).join(', ');
  const temperatures = policy.temperatures ? `; temperatures ${policy.temperatures.map(round).join(', ')}` : '';
  return `${policy.criterion} ≥ [${thresholds}]${temperatures}`;
}

function showModel(runtime) {
  const m = runtime.manifest;
  const facts = $('model-facts');
  facts.replaceChildren();
  const [h, w, c] = runtime.imageShape;
  fact(facts, 'exits at blocks', runtime.exits.join(', '));
  fact(facts, 'FLOPs per exit', runtime.flopsPerExit.map((f) => percent(f / runtime.fullModelFlops)).join(' · '));
  fact(facts, 'exit rule', describePolicy(runtime.policy));
  fact(facts, 'input', `${h}×${w}×${c}, ${runtime.numClasses} classes${m.quantization ? `, ${m.quantization}` : ''}`);
  const threads =
    runtime.threads === false
      ? 'single-threaded wasm (page not cross-origin isolated)'
      : `wasm, ${runtime.numThreads} thread${runtime.numThreads === 1 ? '' : 's'}`;
  fact(facts, 'LiteRT.js', threads);
  $('status').textContent = `Bundle ${runtime.bundleUrl} loaded (keras_dmpo ${m.keras_dmpo_version}).`;
  $('content').hidden = false;
}

/** The samples index, checked; null when the bundle has none. */
async function fetchSamples() {
  const response = await fetch(SAMPLES_URL);
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`${SAMPLES_URL}: HTTP ${response.status}`);
  const index = await response.json();
  const entries = index && Array.isArray(index.images) ? index.images : null;
  const plain = (name) => typeof name === 'string' && name && !/[/\\\0]/.test(name) && name !== '..' && name !== '.';
  if (!entries || !entries.every((e) => e && plain(e.file))) {
    throw new Error(`${SAMPLES_URL} must be {"images": [{"file": "0000.png", "label": ..., "label_name": ...}, ...]} with plain file names.`);
  }
  return entries;
}

async function loadImage(url) {
  const image = new Image();
  image.src = url;
  await image.decode();
  return image;
}

function card(result, imageSource, numExits) {
  const node = element('figure', 'card');
  const picture = element('img');
  picture.src = imageSource;
  picture.alt = result.trueName ?? `sample ${result.file ?? ''}`;
  node.append(picture);
  const caption = element('figcaption');
  const exit = element('div', 'exit-tag', `block ${result.exitBlock} · ${percent(result.fractionOfFull)} FLOPs`);
  exit.style.background = exitColor(result.exitIndex, numExits);
  caption.append(exit);
  const predicted = result.labelName ?? `class ${result.label}`;
  const verdict = result.correct === null ? '' : result.correct ? ' ✓' : ' ✗';
  const line = element('div', `prediction ${result.correct === null ? '' : result.correct ? 'right' : 'wrong'}`,
    `${predicted}${verdict}`);
  caption.append(line);
  if (result.correct === false) caption.append(element('div', 'muted', `true: ${result.trueName}`));
  caption.append(element('div', 'timing', `staged ${ms(result.stagedMs)}`));
  if (result.monolithicMs !== null) caption.append(element('div', 'timing', `full graph ${ms(result.monolithicMs)}`));
  node.append(caption);
  node.dataset.exitIndex = String(result.exitIndex);
  return node;
}

function showSummary(runtime, results) {
  const counts = runtime.exits.map(() => 0);
  for (const r of results) counts[r.exitIndex] += 1;
  const bar = $('exit-bar');
  const legend = $('exit-legend');
  bar.replaceChildren();
  legend.replaceChildren();
  counts.forEach((count, k) => {
    const color = exitColor(k, runtime.numExits);
    if (count) {
      const segment = element('div', 'segment', String(count));
      segment.style.flexGrow = String(count);
      segment.style.background = color;
      segment.title = `block ${runtime.exits[k]}: ${count} images`;
      bar.append(segment);
    }
    const item = element('span', 'legend-item');
    const swatch = element('span', 'swatch');
    swatch.style.background = color;
    item.append(swatch, `block ${runtime.exits[k]} (${percent(runtime.flopsPerExit[k] / runtime.fullModelFlops)}): ${count}`);
    legend.append(item);
  });
  const facts = $('summary-facts');
  facts.replaceChildren();
  const labelled = results.filter((r) => r.correct !== null);
  if (labelled.length) {
    const right = labelled.filter((r) => r.correct).length;
    fact(facts, 'accuracy', `${right} / ${labelled.length} right (${percent(right / labelled.length)})`);
  }
  const meanFraction = results.reduce((sum, r) => sum + r.fractionOfFull, 0) / Math.max(1, results.length);
  fact(facts, 'FLOPs spent', `${percent(meanFraction)} of the full model on average`);
  const staged = median(results.map((r) => r.stagedMs));
  const full = median(results.filter((r) => r.monolithicMs !== null).map((r) => r.monolithicMs));
  const ratio = staged !== null && full ? ` (${(staged / full).toFixed(2)}× the full graph)` : '';
  fact(facts, 'latency here', `staged ${ms(staged)} per image${full ? ` vs monolithic ${ms(full)}` : ''}${ratio}, median`);
}

async function timed(fn) {
  const start = performance.now();
  const value = await fn();
  return [value, performance.now() - start];
}

// Timed runs per image (?repeats=N in the page's URL); the median is shown.
const REPEATS = Math.max(1, Math.min(20, Number(new URLSearchParams(location.search).get('repeats')) || 3));

/** Predict one model-space input, timing the staged run and the monolithic graph (medians). */
async function measure(runtime, x, repeats = REPEATS) {
  let prediction;
  const staged = [];
  const full = [];
  for (let i = 0; i < repeats; i++) {
    let elapsed;
    [prediction, elapsed] = await timed(() => runtime.predict(x));
    staged.push(elapsed);
    if (runtime.hasMonolithic) full.push((await timed(() => runtime.predictMonolithic(x)))[1]);
  }
  return { ...prediction, stagedMs: median(staged), monolithicMs: median(full) };
}

async function runSamples(runtime, results) {
  const grid = $('sample-grid');
  let entries;
  try {
    entries = await fetchSamples();
  } catch (error) {
    grid.replaceChildren(element('p', 'warning', `The sample images cannot be shown: ${error.message}`));
    return results;
  }
  if (!entries || !entries.length) {
    grid.replaceChildren(element('p', 'muted', 'This bundle has no sample images (keras_dmpo.export.write_web_samples).'));
    return results;
  }
  $('samples-count').textContent = `(${entries.length})`;
  let warmedUp = false;
  for (const entry of entries) {
    const url = `${BUNDLE_URL}samples/${encodeURIComponent(entry.file)}`;
    const image = await loadImage(url);
    const x = await runtime.modelInput(image);
    if (!warmedUp) {
      await measure(runtime, x, 1); // the first run of each graph is slower
      warmedUp = true;
    }
    const prediction = await measure(runtime, x);
    const trueLabel = Number.isInteger(entry.label) ? entry.label : null;
    const result = {
      file: entry.file,
      trueLabel,
      trueName: entry.label_name ?? (trueLabel === null ? null : `class ${trueLabel}`),
      correct: trueLabel === null ? null : prediction.label === trueLabel,
      label: prediction.label,
      labelName: prediction.labelName,
      exitIndex: prediction.exitIndex,
      exitBlock: prediction.exitBlock,
      fractionOfFull: prediction.fractionOfFull,
      stagedMs: prediction.stagedMs,
      monolithicMs: prediction.monolithicMs,
      probabilities: Array.from(prediction.probabilities),
    };
    results.push(result);
    grid.append(card(result, url, runtime.numExits));
    showSummary(runtime, results);
  }
  return results;
}

async function predictDropped(runtime, file) {
  const target = $('drop-result');
  target.replaceChildren(element('p', 'muted', `Running ${file.name}…`));
  try {
    const bitmap = await createImageBitmap(file);
    const x = await runtime.modelInput(bitmap);
    bitmap.close();
    const prediction = await measure(runtime, x);
    const result = { ...prediction, correct: null, trueName: file.name };
    const preview = URL.createObjectURL(file);
    const node = card(result, preview, runtime.numExits);
    const top = Array.from(prediction.probabilities, (p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
    const list = element('ol', 'top-classes');
    for (const [p, i] of top) list.append(element('li', '', `${runtime.classNames ? runtime.classNames[i] : `class ${i}`}: ${percent(p)}`));
    node.querySelector('figcaption').prepend(element('div', 'muted', file.name));
    node.querySelector('figcaption').append(list);
    target.replaceChildren(node);
  } catch (error) {
    target.replaceChildren(element('p', 'warning', `${file.name}: ${error.message}`));
  }
}

function wireDropZone(runtime) {
  const zone = $('drop-zone');
  const input = $('file-input');
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const file = event.dataTransfer.files[0];
    if (file) predictDropped(runtime, file);
  });
  input.addEventListener('change', () => {
    if (input.files[0]) predictDropped(runtime, input.files[0]);
  });
}

/**
 * Early-exit predictions of model-space tensors, as plain JSON (for tests).
 * @param {number[][]} tensors each H*W*C values, NHWC
 * @param {object|null} [policy] an ExitPolicy dict for these calls
 */
async function runTensors(tensors, policy = null) {
  const runtime = await window.kerasDmpo.ready;
  const out = [];
  for (const values of tensors) {
    const p = await runtime.predict(Float32Array.from(values), policy ? { policy } : {});
    out.push({
      label: p.label,
      labelName: p.labelName,
      exitIndex: p.exitIndex,
      exitBlock: p.exitBlock,
      flops: p.flops,
      fractionOfFull: p.fractionOfFull,
      probabilities: Array.from(p.probabilities),
    });
  }
  return out;
}

/** The monolithic graph's probabilities of model-space tensors (for tests). */
async function runMonolithic(tensors) {
  const runtime = await window.kerasDmpo.ready;
  const out = [];
  for (const values of tensors) out.push(Array.from((await runtime.predictMonolithic(Float32Array.from(values))).probabilities));
  return out;
}

const results = [];
const ready = api.StagedRuntime.load(BUNDLE_URL).then(
  (runtime) => {
    window.kerasDmpo.runtime = runtime;
    showModel(runtime);
    wireDropZone(runtime);
    return runtime;
  },
  (error) => {
    showError(error);
    throw error;
  },
);
ready.catch(() => {}); // shown on the page; tests read it from kerasDmpo.ready
const samplesDone = ready.then((runtime) => runSamples(runtime, results)).catch((error) => {
  if (window.kerasDmpo.runtime) {
    // The model loaded; only the samples failed: say so beside them.
    $('sample-grid').append(element('p', 'warning', `The sample images stopped: ${error.message}`));
    console.error(error);
  }
  return results;
});

window.kerasDmpo = { api, ready, samplesDone, results, runtime: null, runTensors, runMonolithic };
