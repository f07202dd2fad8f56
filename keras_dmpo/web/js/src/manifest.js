// The manifest.json schema (format_version 2), checked completely before any
// stage file is fetched: the same checks as keras_dmpo/litert/manifest.py,
// with the same key paths in the messages, plus the one thing only a browser
// needs: graphs with a fixed batch of 1.
//
// One difference JSON forces: JavaScript reads 5 and 5.0 as the same number,
// so an integer field written as 5.0 passes here and fails in Python.

import { BundleError, describe, pyRepr } from './bundle_error.js';
import { ExitPolicy } from './policy.js';

export const MANIFEST_NAME = 'manifest.json';
export const FORMAT_VERSION = 2;
// The TFLite converter's quantization modes, then the LiteRT quantizer's
// named recipes ("custom": a recipe of the user's own, written out).
export const CONVERTER_QUANTIZATIONS = Object.freeze([null, 'dynamic', 'float16', 'int8']);
export const QUANTIZER_RECIPES = Object.freeze([
  'weight_only_int8', 'weight_only_int4', 'dynamic_int8', 'dynamic_int4_blockwise', 'static_int8',
  'static_int16', 'mixed', 'int8_matmuls',
]);
const CUSTOM_RECIPE = 'custom';
export const QUANTIZATION_MODES = Object.freeze([...CONVERTER_QUANTIZATIONS, ...QUANTIZER_RECIPES, CUSTOM_RECIPE]);
const RECIPE_RULE_KEYS = ['regex', 'operation', 'algorithm_key', 'op_config'];
export const PREPROCESSING_KEYS = Object.freeze([
  'scale', 'offset', 'input_range', 'resize', 'channels', 'color_order', 'formula',
]);
export const TENSOR_DTYPES = Object.freeze([
  'float32', 'float16', 'float64', 'int8', 'uint8', 'int16', 'int32', 'int64', 'bool',
]);
// Format 1 kept the policy in these top-level keys; in format 2 they would be
// a second copy that a reader could follow instead of `policy`.
const FORMAT1_POLICY_KEYS = ['criterion', 'thresholds', 'temperatures', 'patience'];
// A graph's leading dimension: dynamic (-1, resized by a runtime) or the
// fixed batch of one a web export has.
const BATCH_DIMENSIONS = [-1, 1];
// The same words as keras_dmpo.web (the server refuses such a bundle too).
export const DYNAMIC_BATCH_MESSAGE =
  'graphs have a dynamic batch (-1); LiteRT.js needs batch-1 graphs: export with ' +
  '`keras-dmpo export --web` / `export_tflite(..., web=True)`';

/** @param {unknown} v */
const isInt = (v) => typeof v === 'number' && Number.isInteger(v);
/** @param {unknown} v */
const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
/** @param {unknown} v */
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
/** @param {unknown} v */
const isHexDigest = (v) => typeof v === 'string' && /^[0-9a-fA-F]{64}$/.test(v);
/** @param {number[]} a @param {number[]} b */
const sameList = (a, b) => Array.isArray(a) && a.length === b.length && a.every((v, i) => v === b[i]);

/** Raises `BundleError("<source>: manifest[...] must be ...; got ...")`. */
class Checker {
  /** @param {string} source */
  constructor(source) {
    this.source = source;
  }

  fail(where, value, expected) {
    throw new BundleError(`${this.source}: ${where} must be ${expected}; got ${describe(value)}.`);
  }

  require(mapping, key, where, expected) {
    if (!(key in mapping)) {
      throw new BundleError(`${this.source}: ${where} lacks the required key '${key}' (${expected}).`);
    }
    return mapping[key];
  }

  intAtLeast(value, where, low) {
    if (!isInt(value) || value < low) this.fail(where, value, `an integer >= ${low}`);
    return value;
  }

  number(value, where, low = null, high = null) {
    if (!(isNumber(value) && (low === null || value >= low) && (high === null || value <= high))) {
      const range = low !== null && high !== null ? ` in [${low}, ${high}]` : low !== null ? ` >= ${low}` : '';
      this.fail(where, value, `a finite number${range}`);
    }
    return value;
  }

  string(value, where, optional = false) {
    if (optional && value === null) return value;
    if (typeof value !== 'string') this.fail(where, value, 'a string' + (optional ? ' or null' : ''));
    return value;
  }

  listOf(value, where, length, expected) {
    if (!Array.isArray(value) || (length !== null && value.length !== length)) this.fail(where, value, expected);
    return value;
  }
}

/**
 * Check a manifest against the format 2 schema, then that its graphs have a
 * fixed batch of 1 (LiteRT.js cannot resize a graph's inputs). Nothing is
 * fetched. Throws a BundleError naming the key, the value and what is
 * expected; returns `manifest` unchanged.
 * @param {unknown} manifest the parsed manifest.json
 * @param {string} [source] how messages name it (its URL)
 * @returns {object}
 */
export function validateManifest(manifest, source = MANIFEST_NAME) {
  const check = new Checker(source);
  checkHeader(check, manifest, source);
  const { imageShape, numClasses, exits } = checkModelKeys(check, manifest);
  checkPolicy(check, manifest, exits.length);
  const files = checkStages(check, manifest, imageShape, numClasses, exits);
  const batch = checkBatchDimension(check, manifest);
  const seen = new Map();
  for (const [where, name] of files) {
    if (seen.has(name)) check.fail(where, name, `a file of its own (also named by ${seen.get(name)})`);
    seen.set(name, where);
  }
  if (batch === -1) throw new BundleError(`${source}: ${DYNAMIC_BATCH_MESSAGE}.`);
  return manifest;
}

function checkHeader(check, manifest, source) {
  if (!isObject(manifest)) check.fail('the manifest', manifest, 'a JSON object');
  const version = check.require(manifest, 'format_version', 'the manifest', 'the schema version');
  if (version !== FORMAT_VERSION) {
    throw new BundleError(
      `${source} has format_version=${JSON.stringify(version)}; the keras_dmpo web runtime supports ` +
        `format_version [${FORMAT_VERSION}]. Re-export the model (keras-dmpo export --web).`,
    );
  }
  const format = check.require(manifest, 'format', 'the manifest', '"tflite"');
  if (format !== 'tflite') {
    if (format === 'onnx') {
      throw new BundleError(
        `${source} describes an 'onnx' export; the web runtime runs TFLite exports only ` +
          '(keras-dmpo export --web).',
      );
    }
    check.fail("manifest['format']", format, '"tflite"');
  }
  check.string(
    check.require(manifest, 'keras_dmpo_version', 'the manifest', 'a version string'),
    "manifest['keras_dmpo_version']",
  );
  for (const key of ['created_by', 'flops_convention']) {
    if (key in manifest) check.string(manifest[key], `manifest['${key}']`, true);
  }
}

function checkModelKeys(check, manifest) {
  const imageShape = check.require(manifest, 'image_shape', 'the manifest', '[height, width, channels]');
  if (!Array.isArray(imageShape) || imageShape.length !== 3 || !imageShape.every((d) => isInt(d) && d >= 1)) {
    check.fail("manifest['image_shape']", imageShape, '[height, width, channels] of 3 positive ints');
  }
  const numClasses = check.intAtLeast(
    check.require(manifest, 'num_classes', 'the manifest', 'the class count'),
    "manifest['num_classes']",
    2,
  );
  const classNames = manifest.class_names ?? null;
  if (
    classNames !== null &&
    (!Array.isArray(classNames) ||
      classNames.length !== numClasses ||
      !classNames.every((c) => typeof c === 'string'))
  ) {
    check.fail("manifest['class_names']", classNames, `null or a list of ${numClasses} strings (num_classes)`);
  }
  checkQuantization(check, manifest);
  checkPreprocessing(check, check.require(manifest, 'preprocessing', 'the manifest', 'a dict'), imageShape);

  const exits = check.require(manifest, 'exits', 'the manifest', 'the 1-based exit blocks');
  if (
    !Array.isArray(exits) ||
    !exits.length ||
    !exits.every((e) => isInt(e) && e >= 1) ||
    exits.some((e, i) => i > 0 && e <= exits[i - 1])
  ) {
    check.fail("manifest['exits']", exits, 'a non-empty list of increasing positive ints');
  }
  const full = check.require(manifest, 'full_model_flops', 'the manifest', 'a positive number');
  if (!isNumber(full) || full <= 0) check.fail("manifest['full_model_flops']", full, 'a positive finite number');
  if ('extra' in manifest && !isObject(manifest.extra)) check.fail("manifest['extra']", manifest.extra, 'a dict');
  return { imageShape, numClasses, exits };
}

/** `quantization` and, for a quantizer mode, the recipe it applied. */
function checkQuantization(check, manifest) {
  const quantization = manifest.quantization ?? null;
  if (!QUANTIZATION_MODES.includes(quantization)) {
    check.fail("manifest['quantization']", quantization, `one of ${pyRepr([...QUANTIZATION_MODES])}`);
  }
  const recipe = manifest.quantization_recipe ?? null;
  if (CONVERTER_QUANTIZATIONS.includes(quantization)) {
    // The converter's modes have no recipe: one here would describe something not applied.
    if (recipe !== null) {
      check.fail(
        "manifest['quantization_recipe']",
        recipe,
        `null or absent (quantization ${pyRepr(quantization)} is the converter's, not a recipe)`,
      );
    }
    return;
  }
  checkRecipeRules(check, recipe, "manifest['quantization_recipe']");
  if ('quantization_tool' in manifest) check.string(manifest.quantization_tool, "manifest['quantization_tool']", true);
}

/** A LiteRT quantizer recipe: a non-empty list of rules with string regex, operation and algorithm key. */
function checkRecipeRules(check, recipe, where) {
  const rule = '{"regex", "operation", "algorithm_key", "op_config"}';
  if (!Array.isArray(recipe) || !recipe.length) check.fail(where, recipe, `a non-empty list of recipe rules ${rule}`);
  recipe.forEach((entry, i) => {
    const at = `${where}[${i}]`;
    if (!isObject(entry)) check.fail(at, entry, `a dict ${rule}`);
    const unknown = Object.keys(entry).filter((key) => !RECIPE_RULE_KEYS.includes(key)).sort();
    if (unknown.length) {
      check.fail(`${at} key '${unknown[0]}'`, entry[unknown[0]], `absent: a rule has keys ${pyRepr(RECIPE_RULE_KEYS)}`);
    }
    for (const key of ['regex', 'operation', 'algorithm_key']) {
      const value = check.require(entry, key, at, 'a string');
      if (typeof value !== 'string' || !value) check.fail(`${at}['${key}']`, value, 'a non-empty string');
    }
    if ('op_config' in entry && !isObject(entry.op_config)) check.fail(`${at}['op_config']`, entry.op_config, 'a dict');
  });
}

function checkPreprocessing(check, value, imageShape) {
  const where = "manifest['preprocessing']";
  if (!isObject(value)) check.fail(where, value, 'a dict (scale, offset, input_range, ...)');
  const unknown = Object.keys(value).filter((key) => !PREPROCESSING_KEYS.includes(key)).sort();
  if (unknown.length) {
    // An unknown step (say "mean") would be silently skipped: refuse it.
    check.fail(
      `${where} key '${unknown[0]}'`,
      value[unknown[0]],
      `absent: known keys are ${pyRepr([...PREPROCESSING_KEYS])}`,
    );
  }
  const channels = imageShape[2];
  for (const key of ['scale', 'offset']) {
    const item = check.require(value, key, where, 'a number or one number per channel');
    const items = Array.isArray(item) ? item : [item];
    if ((Array.isArray(item) && item.length !== 1 && item.length !== channels) || !items.every(isNumber)) {
      check.fail(`${where}['${key}']`, item, `a finite number or ${channels} finite numbers`);
    }
    if (key === 'scale' && items.some((v) => v === 0)) check.fail(`${where}['scale']`, item, 'non-zero');
  }
  const inputRange = check.require(value, 'input_range', where, '[low, high] of the raw pixels');
  if (
    !Array.isArray(inputRange) ||
    inputRange.length !== 2 ||
    !inputRange.every(isNumber) ||
    !(inputRange[0] < inputRange[1])
  ) {
    check.fail(`${where}['input_range']`, inputRange, '[low, high] finite numbers with low < high');
  }
  if ('resize' in value && !sameList(value.resize, imageShape.slice(0, 2))) {
    check.fail(`${where}['resize']`, value.resize, `${pyRepr(imageShape.slice(0, 2))} (the model's image size)`);
  }
  if ('channels' in value && (!isInt(value.channels) || value.channels !== channels)) {
    check.fail(`${where}['channels']`, value.channels, `${channels} (image_shape)`);
  }
  for (const key of ['color_order', 'formula']) {
    if (key in value) check.string(value[key], `${where}['${key}']`, true);
  }
}

function checkPolicy(check, manifest, k) {
  for (const key of FORMAT1_POLICY_KEYS) {
    if (key in manifest) {
      check.fail(`manifest['${key}']`, manifest[key], "absent in format 2 (it lives in manifest['policy'])");
    }
  }
  const data = check.require(manifest, 'policy', 'the manifest', 'the exit policy (ExitPolicy.to_dict)');
  if (isObject(data) && 'num_exits' in data && data.num_exits !== k) {
    check.fail("manifest['policy']['num_exits']", data.num_exits, `${k} (len(manifest['exits']))`);
  }
  try {
    ExitPolicy.fromDict(data, "manifest['policy']");
  } catch (error) {
    throw new BundleError(`${check.source}: ${error.message}`);
  }
}

/** A plain file name inside the bundle: no path at all. */
function checkFileName(check, value, where) {
  const expected = "a plain file name inside the export directory (no '..', no path separator, not absolute)";
  if (typeof value !== 'string' || !value || value.length > 255) check.fail(where, value, expected);
  if (value === '.' || value === '..' || /[/\\\0]/.test(value) || value === MANIFEST_NAME) {
    check.fail(where, value, `${expected} and not '${MANIFEST_NAME}'`);
  }
  return value;
}

function checkTensorSpecs(check, specs, where, count = null) {
  const expected =
    (count ? `a list of ${count} tensor spec(s)` : 'a non-empty list of tensor specs') +
    ' {"name": str, "shape": [ints, -1 for the batch], "dtype": str}';
  if (!Array.isArray(specs) || !specs.length || (count !== null && specs.length !== count)) {
    check.fail(where, specs, expected);
  }
  const names = new Set();
  specs.forEach((spec, i) => {
    const at = `${where}[${i}]`;
    if (!isObject(spec)) check.fail(at, spec, 'a dict {"name", "shape", "dtype"}');
    const name = check.require(spec, 'name', at, 'the tensor name');
    if (typeof name !== 'string' || !name) check.fail(`${at}['name']`, name, 'a non-empty string');
    if (names.has(name)) check.fail(`${at}['name']`, name, 'unique within the list');
    names.add(name);
    const shape = check.require(spec, 'shape', at, 'a list of dimensions');
    if (!Array.isArray(shape) || !shape.length || shape.some((d) => !isInt(d) || (d < 1 && d !== -1))) {
      check.fail(`${at}['shape']`, shape, 'a non-empty list of positive ints (-1 for a dynamic dimension)');
    }
    const dtype = check.require(spec, 'dtype', at, 'the element type');
    if (!TENSOR_DTYPES.includes(dtype)) check.fail(`${at}['dtype']`, dtype, `one of ${pyRepr([...TENSOR_DTYPES])}`);
  });
  return Object.fromEntries(specs.map((spec) => [spec.name, spec]));
}

function checkGraphEntry(check, entry, where, imageShape, numClasses, first, last) {
  if (!isObject(entry)) check.fail(where, entry, 'a dict (a graph entry)');
  checkFileName(check, check.require(entry, 'file', where, "the graph's file name"), `${where}['file']`);
  const digest = check.require(entry, 'sha256', where, "the file's hex sha256");
  if (!isHexDigest(digest)) check.fail(`${where}['sha256']`, digest, 'a 64-character hex sha256 string');
  check.intAtLeast(check.require(entry, 'size_bytes', where, 'the file size'), `${where}['size_bytes']`, 0);
  if ('signature_key' in entry) check.string(entry.signature_key, `${where}['signature_key']`, true);
  const inputs = checkTensorSpecs(
    check, check.require(entry, 'inputs', where, 'the input specs'), `${where}['inputs']`, 1,
  );
  const [spec] = Object.values(inputs);
  if (spec.dtype !== 'float32') {
    check.fail(`${where}['inputs'][0]['dtype']`, spec.dtype, "'float32' (the runtime feeds float32)");
  }
  if (first && !sameList(spec.shape.slice(1), imageShape)) {
    check.fail(`${where}['inputs'][0]['shape']`, spec.shape, `[-1, ${imageShape.join(', ')}] (batch + image_shape)`);
  }
  if (!first && spec.shape.length !== 3) {
    check.fail(`${where}['inputs'][0]['shape']`, spec.shape, '[batch, tokens, width]');
  }
  const outputs = checkTensorSpecs(
    check, check.require(entry, 'outputs', where, 'the output specs'), `${where}['outputs']`,
  );
  const wanted = last ? ['probabilities'] : ['probabilities', 'tokens'];
  const names = Object.keys(outputs).sort();
  if (!sameList(names, wanted)) check.fail(`${where}['outputs']`, names, `outputs named ${pyRepr(wanted)}`);
  for (const name of names) {
    // The runtime reads float32, and the tokens feed the next stage's float32 input.
    if (outputs[name].dtype !== 'float32') {
      check.fail(`${where}['outputs'] '${name}' dtype`, outputs[name].dtype, "'float32' (float graph outputs)");
    }
  }
  const probabilities = outputs.probabilities.shape;
  if (probabilities.length !== 2 || probabilities[1] !== numClasses) {
    check.fail(`${where}['outputs'] 'probabilities' shape`, probabilities, `[batch, ${numClasses}] (num_classes)`);
  }
  if (!last && outputs.tokens.shape.length !== 3) {
    check.fail(`${where}['outputs'] 'tokens' shape`, outputs.tokens.shape, '[batch, tokens, width]');
  }
  return { inputs, outputs };
}

function checkStages(check, manifest, imageShape, numClasses, exits) {
  const k = exits.length;
  const stages = check.require(manifest, 'stages', 'the manifest', 'the stage entries');
  check.listOf(
    stages, "manifest['stages']", k, `a list of ${k} stage entries (one per exit in manifest['exits'])`,
  );
  const files = [];
  let previousFlops = 0;
  let previousTokens = null;
  stages.forEach((entry, i) => {
    const where = `manifest['stages'][${i}]`;
    const { inputs, outputs } = checkGraphEntry(
      check, entry, where, imageShape, numClasses, i === 0, i === k - 1,
    );
    if (entry.index !== i + 1) check.fail(`${where}['index']`, entry.index, `${i + 1} (1-based stage number)`);
    if (entry.exit_block !== exits[i]) {
      check.fail(`${where}['exit_block']`, entry.exit_block, `${exits[i]} (manifest['exits'][${i}])`);
    }
    if ('threshold' in entry) {
      check.fail(`${where}['threshold']`, entry.threshold, "absent in format 2 (it lives in manifest['policy'])");
    }
    const flops = check.number(check.require(entry, 'flops', where, 'cumulative FLOPs'), `${where}['flops']`, 0);
    if (flops < previousFlops) {
      check.fail(
        `${where}['flops']`,
        entry.flops,
        `>= the previous stage's ${previousFlops} (cumulative FLOPs never decrease)`,
      );
    }
    previousFlops = flops;
    for (const key of ['stage_flops', 'fraction_of_full_model']) {
      if (key in entry) check.number(entry[key], `${where}['${key}']`, 0);
    }
    const [spec] = Object.values(inputs);
    if (previousTokens !== null && !sameList(spec.shape.slice(1), previousTokens.slice(1))) {
      check.fail(`${where}['inputs'][0]['shape']`, spec.shape, `the previous stage's tokens shape ${pyRepr(previousTokens)}`);
    }
    previousTokens = 'tokens' in outputs ? outputs.tokens.shape : null;
    files.push([`${where}['file']`, entry.file]);
  });
  const monolithic = manifest.monolithic ?? null;
  if (monolithic !== null) {
    checkGraphEntry(check, monolithic, "manifest['monolithic']", imageShape, numClasses, true, true);
    if ('flops' in monolithic) check.number(monolithic.flops, "manifest['monolithic']['flops']", 0);
    files.push(["manifest['monolithic']['file']", monolithic.file]);
  }
  return files;
}

/** Every graph tensor has the same leading (batch) dimension, -1 or 1; returns it. */
function checkBatchDimension(check, manifest) {
  const batch = manifest.stages[0].inputs[0].shape[0];
  if (!BATCH_DIMENSIONS.includes(batch)) {
    check.fail("manifest['stages'][0]['inputs'][0]['shape'][0]", batch, '-1 (dynamic batch) or 1 (web)');
  }
  for (const [where, entry] of graphEntries(manifest)) {
    for (const kind of ['inputs', 'outputs']) {
      entry[kind].forEach((spec, j) => {
        if (spec.shape[0] !== batch) {
          check.fail(
            `${where}['${kind}'][${j}]['shape'][0]`,
            spec.shape[0],
            `${batch}, the batch dimension of manifest['stages'][0]'s input (one kind of graph per bundle)`,
          );
        }
      });
    }
  }
  return batch;
}

/**
 * `[where, entry]` of every graph of a validated manifest: the stages, then
 * the monolithic one when there is one.
 * @param {object} manifest
 * @returns {[string, object][]}
 */
export function graphEntries(manifest) {
  const entries = manifest.stages.map((entry, i) => [`manifest['stages'][${i}]`, entry]);
  if (manifest.monolithic) entries.push(["manifest['monolithic']", manifest.monolithic]);
  return entries;
}
