// StagedRuntime: a web export bundle in the browser with LiteRT.js, one
// image at a time, exiting early like keras_dmpo.litert.StagedRuntime.
//
// LiteRT.js tensors live in the wasm heap and are not garbage collected:
// every tensor made or returned here is deleted before predict returns, and
// delete() frees the compiled graphs.

import { loadAndCompile, Tensor } from '@litertjs/core';

import { BundleError, pyRepr } from './bundle_error.js';
import { bundleBase, fetchGraph, fetchManifest, fileUrl } from './bundle_fetch.js';
import { ensureLiteRt } from './litert_loader.js';
import { graphEntries, validateManifest } from './manifest.js';
import { argmax, ExitPolicy } from './policy.js';
import { preprocessImage } from './preprocess.js';

/** One compiled graph and the manifest entry it was checked against. */
class Graph {
  constructor(compiled, runner, entry) {
    this.compiled = compiled;
    this.runner = runner;
    this.entry = entry;
    this.inputName = entry.inputs[0].name;
  }
}

/**
 * Refuse a compiled graph whose signature differs from its manifest entry
 * (names, shapes and dtypes; outputs are matched by name, since LiteRT.js
 * may list them in another order than the manifest).
 */
function checkSignature(url, runner, entry) {
  for (const [kind, details] of [['inputs', runner.getInputDetails()], ['outputs', runner.getOutputDetails()]]) {
    const expected = Object.fromEntries(entry[kind].map((spec) => [spec.name, spec]));
    const names = details.map((d) => d.name).sort();
    const wanted = Object.keys(expected).sort();
    if (names.join('\0') !== wanted.join('\0')) {
      throw new BundleError(`${url} has signature ${kind} ${pyRepr(names)}; the manifest says ${pyRepr(wanted)}.`);
    }
    for (const detail of details) {
      const shape = Array.from(detail.shape);
      const want = expected[detail.name];
      if (shape.join(',') !== want.shape.join(',') || detail.dtype !== want.dtype) {
        throw new BundleError(
          `${url}: signature ${kind.slice(0, -1)} '${detail.name}' has shape ${pyRepr(shape)} and dtype ` +
            `${detail.dtype}; the manifest says ${pyRepr(want.shape)} and ${want.dtype}.`,
        );
      }
    }
  }
}

async function compileGraph(base, entry, options) {
  const bytes = await fetchGraph(base, entry, options);
  const url = fileUrl(base, entry.file).href;
  let compiled;
  try {
    compiled = await loadAndCompile(bytes, { accelerator: 'wasm', cpuOptions: { numThreads: options.numThreads } });
  } catch (error) {
    throw new BundleError(`${url} does not load as a TFLite graph in LiteRT.js: ${error.message}`);
  }
  try {
    const key = entry.signature_key ?? compiled.key;
    const runner = compiled.signatures[key];
    if (!runner) {
      throw new BundleError(
        `${url} has signatures ${pyRepr(Object.keys(compiled.signatures))}; the manifest says signature_key '${key}'.`,
      );
    }
    checkSignature(url, runner, entry);
    return new Graph(compiled, runner, entry);
  } catch (error) {
    compiled.delete();
    throw error;
  }
}

/** @param {unknown} value @param {number} numExits */
function toPolicy(value, numExits, argument = 'policy') {
  const policy = value instanceof ExitPolicy ? value : ExitPolicy.fromDict(value, argument);
  if (policy.numExits !== numExits) {
    throw new BundleError(`\`${argument}\` is for ${policy.numExits} exits; this bundle has ${numExits}.`);
  }
  return policy;
}

/**
 * Runs a web export bundle's stage graphs with the early-exit rule.
 * Make one with `await StagedRuntime.load(bundleUrl)`.
 */
export class StagedRuntime {
  /** @private use StagedRuntime.load */
  constructor(base, manifest, stages, monolithic, policy, threads, numThreads) {
    this.bundleUrl = base.href;
    this.manifest = manifest;
    this.exits = [...manifest.exits];
    this.imageShape = [...manifest.image_shape];
    this.classNames = manifest.class_names ?? null;
    this.numClasses = manifest.num_classes;
    this.flopsPerExit = manifest.stages.map((stage) => stage.flops);
    this.fullModelFlops = manifest.full_model_flops;
    this.threads = threads;
    this.numThreads = numThreads;
    this._stages = stages;
    this._monolithic = monolithic;
    this._policy = policy;
    this._deleted = false;
    this._queue = Promise.resolve();
  }

  /**
   * Run `work` after every call queued before it: a graph is never run by two
   * predictions at once (a dropped image while the samples run, say).
   */
  _exclusive(work) {
    const result = this._queue.then(work);
    this._queue = result.catch(() => {});
    return result;
  }

  /**
   * Fetch, check and compile a bundle. The manifest is validated before any
   * graph is fetched; each graph's size and sha256 are checked before it is
   * compiled, and its signature after.
   * @param {string|URL} bundleUrl the bundle's folder (holds manifest.json)
   * @param {object} [options]
   * @param {number} [options.numThreads] LiteRT CPU threads per graph (default: up to 4 when the page
   *   can run the threaded wasm, else 1)
   * @param {boolean} [options.threads] load the threaded wasm (default: when the page is cross-origin isolated)
   * @param {string} [options.wasmUrl] LiteRT.js's wasm folder (default: @litertjs/core's own, from the import map)
   * @param {object|ExitPolicy} [options.policy] an exit policy (ExitPolicy.to_dict) instead of the manifest's
   * @param {boolean} [options.verifyHashes] check the sha256 of every graph (default true)
   * @param {typeof fetch} [options.fetch] the fetch to use
   * @returns {Promise<StagedRuntime>}
   */
  static async load(bundleUrl, options = {}) {
    const base = bundleBase(bundleUrl);
    const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
    const { url, manifest } = await fetchManifest(base, fetchFn);
    validateManifest(manifest, url.href);
    const policy = toPolicy(
      options.policy ?? manifest.policy, manifest.exits.length, options.policy ? 'policy' : "manifest['policy']",
    );
    const { threads } = await ensureLiteRt({ wasmUrl: options.wasmUrl, threads: options.threads });
    let numThreads = options.numThreads ?? (threads ? Math.min(navigator.hardwareConcurrency || 1, 4) : 1);
    if (!Number.isInteger(numThreads) || numThreads < 1) {
      throw new Error(`\`numThreads\` must be an integer >= 1; got ${numThreads}.`);
    }
    if (threads === false) numThreads = 1; // the single-threaded wasm has no thread pool
    const graphOptions = { fetch: fetchFn, verifyHashes: options.verifyHashes ?? true, numThreads };
    const graphs = [];
    try {
      for (const [, entry] of graphEntries(manifest)) graphs.push(await compileGraph(base, entry, graphOptions));
    } catch (error) {
      for (const graph of graphs) graph.compiled.delete();
      throw error;
    }
    const stages = graphs.slice(0, manifest.stages.length);
    const monolithic = graphs.length > stages.length ? graphs[stages.length] : null;
    return new StagedRuntime(base, manifest, stages, monolithic, policy, threads, numThreads);
  }

  get numExits() {
    return this._stages.length;
  }

  get hasMonolithic() {
    return this._monolithic !== null;
  }

  /** The ExitPolicy in use. Assign another one (or its dict) to change it. */
  get policy() {
    return this._policy;
  }

  set policy(value) {
    this._policy = toPolicy(value, this.numExits);
  }

  /**
   * Stage 1's input for `input`: a model-space Float32Array of H*W*C values
   * (NHWC, after preprocessing), or an image to preprocess.
   * @param {Float32Array|import('./preprocess.js').ImageInput} input
   * @returns {Promise<Float32Array>}
   */
  async modelInput(input) {
    const [h, w, c] = this.imageShape;
    if (input instanceof Float32Array) {
      if (input.length !== h * w * c) {
        throw new Error(
          `\`input\` has ${input.length} values; a model-space image of shape [1, ${h}, ${w}, ${c}] has ${h * w * c}.`,
        );
      }
      const bad = input.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) throw new Error(`\`input\` holds a non-finite value (${input[bad]}) at index ${bad}.`);
      return input;
    }
    return preprocessImage(input, this.imageShape, this.manifest.preprocessing);
  }

  _checkAlive() {
    if (this._deleted) throw new Error('This StagedRuntime was deleted.');
  }

  _answer(probabilities) {
    const label = argmax(probabilities);
    return {
      label,
      labelName: this.classNames ? this.classNames[label] : null,
      probabilities,
    };
  }

  /**
   * Early-exit prediction of one image: stage 1, then each next stage only
   * while the policy passes the image on.
   * @param {Float32Array|import('./preprocess.js').ImageInput} input
   * @param {{policy?: object|ExitPolicy}} [options] a policy for this call only
   */
  async predict(input, options = {}) {
    this._checkAlive();
    const policy = options.policy ? toPolicy(options.policy, this.numExits) : this._policy;
    const x = await this.modelInput(input);
    return this._exclusive(() => this._runStages(x, policy));
  }

  async _runStages(x, policy) {
    this._checkAlive();
    const owned = [];
    const track = (tensor) => (owned.push(tensor), tensor);
    let feed = track(new Tensor(x, [1, ...this.imageShape]));
    let state = policy.start();
    const stageMs = [];
    try {
      for (let k = 0; k < this.numExits; k++) {
        const stage = this._stages[k];
        const start = performance.now();
        const outputs = await stage.runner.run({ [stage.inputName]: feed });
        Object.values(outputs).forEach(track);
        const probabilities = outputs.probabilities.toTypedArray();
        stageMs.push(performance.now() - start);
        const step = policy.step(k, probabilities, state);
        if (step.leave) {
          const flops = this.flopsPerExit[k];
          return {
            ...this._answer(probabilities),
            exitIndex: k,
            exitBlock: this.exits[k],
            flops,
            fractionOfFull: flops / this.fullModelFlops,
            stageMs,
          };
        }
        state = step.state;
        feed.delete(); // done with this stage's input; its tokens feed the next
        feed = outputs.tokens;
      }
      throw new Error('unreachable: the last exit always answers');
    } finally {
      for (const tensor of owned) if (!tensor.deleted) tensor.delete();
    }
  }

  /**
   * The monolithic graph's answer (all blocks, last exit) for one image.
   * @param {Float32Array|import('./preprocess.js').ImageInput} input
   */
  async predictMonolithic(input) {
    this._checkAlive();
    if (!this._monolithic) {
      throw new Error(`The bundle at ${this.bundleUrl} has no monolithic graph (manifest['monolithic'] is null).`);
    }
    const x = await this.modelInput(input);
    return this._exclusive(() => this._runMonolithic(x));
  }

  async _runMonolithic(x) {
    this._checkAlive();
    const graph = this._monolithic;
    const feed = new Tensor(x, [1, ...this.imageShape]);
    let outputs = {};
    try {
      const start = performance.now();
      outputs = await graph.runner.run({ [graph.inputName]: feed });
      const probabilities = outputs.probabilities.toTypedArray();
      return { ...this._answer(probabilities), ms: performance.now() - start };
    } finally {
      feed.delete();
      for (const tensor of Object.values(outputs)) if (!tensor.deleted) tensor.delete();
    }
  }

  /**
   * Free the compiled graphs (once a prediction under way is done); the
   * runtime cannot predict afterwards.
   */
  delete() {
    if (this._deleted) return;
    this._deleted = true;
    this._exclusive(() => {
      for (const graph of [...this._stages, this._monolithic]) if (graph) graph.compiled.delete();
    });
  }
}
