// The early-exit rule, the same as keras_dmpo.policy (rule.py and
// ExitPolicy): after each stage the exit either answers for the image or
// passes it on; the last exit always answers. Float64 math throughout, as
// numpy does, so scores agree with Python's to rounding.
//
// No LiteRT import here: the rule runs in Node as well as in the browser.

import { BundleError, pyRepr } from './bundle_error.js';

export const CRITERIA = Object.freeze(['confidence', 'entropy', 'patience']);
export const SCORE_CRITERIA = Object.freeze(['confidence', 'entropy']);
// The fields of ExitPolicy.to_dict; others are refused.
export const POLICY_KEYS = Object.freeze([
  'criterion', 'num_exits', 'thresholds', 'temperatures', 'patience', 'calibration',
]);
const REQUIRED_KEYS = ['criterion', 'num_exits', 'thresholds'];
const DEFAULT_PATIENCE = 2;

/** @param {unknown} v */
const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
/** @param {unknown} v */
const isInt = (v) => typeof v === 'number' && Number.isInteger(v);

/**
 * Probabilities at temperature `temperature`: softmax(log p / T). null or 1
 * leaves them unchanged. The argmax (the label) never changes.
 * @param {ArrayLike<number>} probabilities one exit's C probabilities
 * @param {number|null|undefined} temperature
 * @returns {Float64Array}
 */
export function temper(probabilities, temperature) {
  const p = Float64Array.from(probabilities);
  if (temperature === null || temperature === undefined || temperature === 1) return p;
  let max = -Infinity;
  for (let i = 0; i < p.length; i++) {
    p[i] = Math.log(Math.max(p[i], 1e-300)) / temperature;
    if (p[i] > max) max = p[i];
  }
  let sum = 0;
  for (let i = 0; i < p.length; i++) {
    p[i] = Math.exp(p[i] - max);
    sum += p[i];
  }
  for (let i = 0; i < p.length; i++) p[i] /= sum;
  return p;
}

/**
 * An exit's score in [0, 1]: "confidence" is the max probability, "entropy"
 * is 1 - H / ln C (H in nats, 0·log 0 = 0; 1 when C == 1).
 * @param {ArrayLike<number>} probabilities one exit's C probabilities
 * @param {'confidence'|'entropy'} criterion
 * @param {number|null} [temperature] applied first (temper)
 * @returns {number}
 */
export function exitScore(probabilities, criterion, temperature = null) {
  if (!SCORE_CRITERIA.includes(criterion)) {
    throw new Error(
      `\`criterion\` ${pyRepr(criterion)} has no per-exit score; scores exist for ${pyRepr([...SCORE_CRITERIA])}.`,
    );
  }
  if (probabilities.length === 0) throw new Error('`probabilities` must hold at least one class.');
  const p = temper(probabilities, temperature);
  let score;
  if (criterion === 'confidence') {
    score = -Infinity;
    for (const v of p) if (v > score) score = v;
  } else {
    if (p.length < 2) return 1;
    let entropy = 0;
    for (const raw of p) {
      const v = Math.min(Math.max(raw, 0), 1);
      if (v > 0) entropy -= v * Math.log(v);
    }
    score = 1 - entropy / Math.log(p.length);
  }
  return Math.min(Math.max(score, 0), 1);
}

/**
 * The comparison of the rule: a score at or above its threshold.
 * @param {number} score
 * @param {number} threshold
 */
export function passes(score, threshold) {
  return score >= threshold;
}

/**
 * The first index of the largest value (numpy's argmax).
 * @param {ArrayLike<number>} values
 */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Which exit answers: a criterion and its parameters, validated once
 * (`ExitPolicy.fromDict`) and frozen, like Python's ExitPolicy.
 */
export class ExitPolicy {
  /**
   * @param {{criterion: string, numExits: number, thresholds: number[]|null,
   *   temperatures: number[]|null, patience: number|null, calibration: object|null}} fields
   *   already validated (use `fromDict`)
   */
  constructor(fields) {
    this.criterion = fields.criterion;
    this.numExits = fields.numExits;
    this.thresholds = fields.thresholds === null ? null : Object.freeze([...fields.thresholds]);
    this.temperatures = fields.temperatures === null ? null : Object.freeze([...fields.temperatures]);
    this.patience = fields.patience;
    this.calibration = fields.calibration;
    Object.freeze(this);
  }

  /**
   * A policy from its dict (ExitPolicy.to_dict, the manifest's `policy`).
   * @param {unknown} data
   * @param {string} [argument] how messages name it
   * @returns {ExitPolicy}
   */
  static fromDict(data, argument = 'policy') {
    const fail = (message) => {
      throw new BundleError(`\`${argument}\` is not a valid exit policy: ${message}`);
    };
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      throw new BundleError(
        `\`${argument}\` must be a dict with keys ${pyRepr([...POLICY_KEYS])}; got ${JSON.stringify(data)}.`,
      );
    }
    const unknown = Object.keys(data).filter((key) => !POLICY_KEYS.includes(key)).sort();
    if (unknown.length) {
      throw new BundleError(
        `\`${argument}\` has unknown keys ${pyRepr(unknown)}; expected some of ${pyRepr([...POLICY_KEYS])}.`,
      );
    }
    const missing = REQUIRED_KEYS.filter((key) => !(key in data));
    if (missing.length) {
      throw new BundleError(`\`${argument}\` lacks the keys ${pyRepr(missing)} (it needs ${pyRepr(REQUIRED_KEYS)}).`);
    }
    const { criterion, num_exits: k } = data;
    if (typeof criterion !== 'string' || !CRITERIA.includes(criterion)) {
      fail(`\`criterion\` must be one of ${pyRepr([...CRITERIA])}; got ${JSON.stringify(criterion)}.`);
    }
    if (!isInt(k) || k < 1) fail(`\`num_exits\` must be a positive integer; got ${JSON.stringify(k)}.`);
    const patienceValue = data.patience ?? null;
    let thresholds = null;
    let patience = null;
    if (criterion === 'patience') {
      if (data.thresholds !== null) {
        fail(
          '`thresholds` must be None for criterion=\'patience\' (it compares the exits\' labels, not ' +
            `scores); got thresholds=${JSON.stringify(data.thresholds)}.`,
        );
      }
      if (k < 2) fail(`criterion='patience' needs at least 2 exits (it compares exits in a row); got ${k}.`);
      patience = patienceValue === null ? DEFAULT_PATIENCE : patienceValue;
      if (!isInt(patience) || patience < 2 || patience > k) {
        fail(
          `\`patience\` must be an integer in [2, ${k}] (exits in a row that agree, at most the number ` +
            `of exits); got ${JSON.stringify(patience)}.`,
        );
      }
    } else {
      if (patienceValue !== null) {
        fail(
          `\`patience\` applies to criterion='patience' only; got patience=${JSON.stringify(patienceValue)} ` +
            `with criterion='${criterion}'.`,
        );
      }
      thresholds = data.thresholds === null ? [...Array(k - 1).fill(1), 0] : data.thresholds;
      if (!Array.isArray(thresholds) || !thresholds.every((t) => typeof t === 'number')) {
        fail(`\`thresholds\` must be ${k} numbers in [0, 1]; got ${JSON.stringify(data.thresholds)}.`);
      }
      if (thresholds.length !== k) {
        fail(
          `\`thresholds\` has ${thresholds.length} values; expected ${k} (one per exit, the last one ` +
            `ignored). Got ${JSON.stringify(thresholds)}.`,
        );
      }
      const bad = thresholds.filter((t) => !(t >= 0 && t <= 1));
      if (bad.length) {
        fail(`\`thresholds\` must be in [0, 1] (scores are); got ${pyRepr(bad)} in ${pyRepr(thresholds)}.`);
      }
    }
    const temperatures = data.temperatures ?? null;
    if (
      temperatures !== null &&
      (!Array.isArray(temperatures) ||
        temperatures.length !== k ||
        !temperatures.every((t) => isNumber(t) && t > 0))
    ) {
      fail(
        `\`temperatures\` must be None or ${k} positive numbers (one per exit); got ${JSON.stringify(temperatures)}.`,
      );
    }
    const calibration = data.calibration ?? null;
    if (calibration !== null) {
      try {
        checkCalibrationRecord(calibration);
      } catch (error) {
        fail(error.message);
      }
    }
    return new ExitPolicy({ criterion, numExits: k, thresholds, temperatures, patience, calibration });
  }

  /** The JSON form, ExitPolicy.to_dict's. */
  toDict() {
    return {
      criterion: this.criterion,
      num_exits: this.numExits,
      thresholds: this.thresholds === null ? null : [...this.thresholds],
      temperatures: this.temperatures === null ? null : [...this.temperatures],
      patience: this.patience,
      calibration: this.calibration,
    };
  }

  /**
   * Exit `k`'s score of its probabilities (score criteria).
   * @param {number} k 0-based exit
   * @param {ArrayLike<number>} probabilities
   */
  score(k, probabilities) {
    const temperature = this.temperatures === null ? null : this.temperatures[k];
    return exitScore(probabilities, /** @type {'confidence'|'entropy'} */ (this.criterion), temperature);
  }

  /** The running state before stage 1: patience carries the last label and its streak. */
  start() {
    return this.criterion === 'patience' ? { label: -1, streak: 0 } : null;
  }

  /**
   * After stage `k` (0-based): does the image answer here?
   * @param {number} k
   * @param {ArrayLike<number>} probabilities exit k's probabilities
   * @param {{label: number, streak: number}|null} state from `start` or the previous step
   * @returns {{leave: boolean, state: {label: number, streak: number}|null}}
   */
  step(k, probabilities, state) {
    if (k === this.numExits - 1) return { leave: true, state: null };
    if (this.criterion !== 'patience') {
      return { leave: passes(this.score(k, probabilities), this.thresholds[k]), state: null };
    }
    const label = argmax(probabilities);
    const streak = label === state.label ? state.streak + 1 : 1;
    return { leave: passes(streak, this.patience), state: { label, streak } };
  }

  /**
   * The exit (0-based) that answers one image, from every exit's probabilities
   * (the same loop as a staged run).
   * @param {ArrayLike<number>[]} probabilitiesPerExit K arrays of C probabilities
   */
  assign(probabilitiesPerExit) {
    if (probabilitiesPerExit.length !== this.numExits) {
      throw new Error(
        `\`probabilities\` must hold ${this.numExits} exits' probabilities; got ${probabilitiesPerExit.length}.`,
      );
    }
    let state = this.start();
    for (let k = 0; k < this.numExits; k++) {
      const step = this.step(k, probabilitiesPerExit[k], state);
      if (step.leave) return k;
      state = step.state;
    }
    return this.numExits - 1; // not reached: the last exit always leaves
  }
}

// CalibrationResult.from_dict's checks: field -> [may it be null, kind].
const CALIBRATION_FIELDS = {
  thresholds: [true, 'numbers'],
  expected_flops: [false, 'number'],
  expected_fraction: [true, 'number'],
  validation_accuracy: [false, 'number'],
  exit_fractions: [false, 'numbers'],
  budget: [false, 'number'],
  full_model_flops: [true, 'number'],
  num_samples: [false, 'int'],
  max_accuracy_drop: [true, 'number'],
  target_accuracy: [true, 'number'],
  patience: [true, 'int'],
};
const CALIBRATION_KEYS = [...Object.keys(CALIBRATION_FIELDS), 'mode'];
const CALIBRATION_REQUIRED = [
  'thresholds', 'expected_flops', 'expected_fraction', 'validation_accuracy', 'exit_fractions', 'budget',
];
const CALIBRATION_MODES = ['flops_budget', 'max_accuracy_drop'];

/**
 * The calibration record a policy may carry (it is informative only, but a
 * malformed one means a malformed manifest).
 * @param {unknown} data
 */
function checkCalibrationRecord(data) {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new Error(`A calibration record must be a dict; got ${Array.isArray(data) ? 'list' : typeof data}.`);
  }
  const unknown = Object.keys(data).filter((key) => !CALIBRATION_KEYS.includes(key)).sort();
  if (unknown.length) {
    throw new Error(
      `Unknown CalibrationResult keys ${pyRepr(unknown)}; expected ${pyRepr([...CALIBRATION_KEYS].sort())}.`,
    );
  }
  // A patience record's thresholds are read as None whatever they hold.
  const patienceRecord = data.patience !== undefined && data.patience !== null;
  for (const [key, [optional, kind]] of Object.entries(CALIBRATION_FIELDS)) {
    if (!(key in data) || (key === 'thresholds' && patienceRecord)) continue;
    const value = data[key];
    const fits =
      kind === 'number' ? isNumber(value) : kind === 'int' ? isInt(value)
        : Array.isArray(value) && value.every(isNumber);
    if (!((optional && value === null) || fits)) {
      const expected = { number: 'a finite number', int: 'an integer', numbers: 'a list of numbers' }[kind];
      throw new Error(
        `Calibration record field '${key}' must be ${expected}${optional ? ' or None' : ''}; got ${JSON.stringify(value)}.`,
      );
    }
  }
  const mode = 'mode' in data ? data.mode : 'flops_budget';
  if (!CALIBRATION_MODES.includes(mode)) {
    throw new Error(`Calibration record field 'mode' must be one of ${pyRepr(CALIBRATION_MODES)}; got ${JSON.stringify(mode)}.`);
  }
  const missing = CALIBRATION_REQUIRED.filter((key) => !(key in data));
  if (missing.length) throw new Error(`Calibration record is missing fields: ${pyRepr(missing)}.`);
}
