// BundleError: a bundle (manifest, stage file or policy) that the web
// runtime refuses. Messages follow the Python reader's wording:
// "<source>: <where> must be <expected>; got <value> (<type>)."

/** A bundle the runtime refuses; `message` names the key, the value and what is expected. */
export class BundleError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'BundleError';
  }
}

/**
 * A short, readable rendering of a JSON value and its type, for messages.
 * @param {unknown} value
 * @returns {string}
 */
export function describe(value) {
  let text;
  try {
    text = value === undefined ? 'undefined' : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  if (text.length > 60) text = text.slice(0, 57) + '...';
  return `${text} (${typeName(value)})`;
}

/** @param {unknown} value */
function typeName(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

/**
 * `[1, 2]` the way the Python messages print lists and strings (repr), so a
 * message reads the same from both runtimes.
 * @param {unknown} value
 */
export function pyRepr(value) {
  if (value === null || value === undefined) return 'None';
  if (value === true) return 'True';
  if (value === false) return 'False';
  if (typeof value === 'string') return `'${value}'`;
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(', ')}]`;
  return String(value);
}
