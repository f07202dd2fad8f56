// Fetching a bundle's files: the manifest as JSON, each graph as bytes
// checked against the manifest's size and sha256 (Web Crypto).

import { BundleError } from './bundle_error.js';
import { MANIFEST_NAME } from './manifest.js';

// A manifest is a few KB; anything this large is not one.
const MAX_MANIFEST_BYTES = 16 << 20;

/**
 * The bundle's folder URL, with a trailing slash so names resolve inside it.
 * @param {string|URL} bundleUrl
 * @returns {URL}
 */
export function bundleBase(bundleUrl) {
  if (typeof bundleUrl !== 'string' && !(bundleUrl instanceof URL)) {
    throw new TypeError(`\`bundleUrl\` must be a URL string or URL; got ${typeof bundleUrl}.`);
  }
  const base = new URL(bundleUrl, globalThis.location?.href);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  base.search = '';
  base.hash = '';
  return base;
}

/**
 * The URL of a file named by a validated manifest. The name is encoded, so
 * it can only ever be a file in the bundle's folder (a name like
 * "https:host" would otherwise be read as an absolute URL).
 * @param {URL} base
 * @param {string} name
 */
export function fileUrl(base, name) {
  return new URL(encodeURIComponent(name), base);
}

async function get(url, what, fetchFn) {
  let response;
  try {
    response = await fetchFn(url.href);
  } catch (error) {
    throw new BundleError(`Fetching ${what} ${url.href} failed: ${error.message}`);
  }
  if (!response.ok) {
    throw new BundleError(`${url.href}: HTTP ${response.status} ${response.statusText} (${what}).`);
  }
  return response;
}

/**
 * The parsed manifest.json of a bundle (not yet validated).
 * @param {URL} base
 * @param {typeof fetch} fetchFn
 */
export async function fetchManifest(base, fetchFn) {
  const url = new URL(MANIFEST_NAME, base);
  let response;
  try {
    response = await fetchFn(url.href);
  } catch (error) {
    throw new BundleError(`Fetching the manifest ${url.href} failed: ${error.message}`);
  }
  if (!response.ok) {
    throw new BundleError(
      `No ${MANIFEST_NAME} at ${url.href} (HTTP ${response.status}): not a keras_dmpo export, or an ` +
        'export that did not finish.',
    );
  }
  const text = await response.text();
  if (text.length > MAX_MANIFEST_BYTES) {
    throw new BundleError(
      `${url.href} has ${text.length} characters; a manifest has a few KB (at most ${MAX_MANIFEST_BYTES} ` +
        'accepted): not a keras_dmpo manifest.',
    );
  }
  try {
    return { url, manifest: JSON.parse(text) };
  } catch (error) {
    throw new BundleError(`${url.href} is not valid JSON (corrupt manifest): ${error.message}`);
  }
}

/** @param {ArrayBuffer|Uint8Array} bytes */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new Error(
      "Checking the stage files' sha256 needs Web Crypto (crypto.subtle), which browsers give only to " +
        `secure contexts (https://, or http://127.0.0.1 / localhost); this page is at ${globalThis.location?.origin}. ` +
        'Serve it over https or from this machine, or load with verifyHashes: false.',
    );
  }
  const digest = new Uint8Array(await subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A graph's bytes, refused unless they have the manifest's size and sha256.
 * @param {URL} base
 * @param {{file: string, size_bytes: number, sha256: string}} entry
 * @param {{fetch: typeof fetch, verifyHashes: boolean}} options
 * @returns {Promise<Uint8Array>}
 */
export async function fetchGraph(base, entry, options) {
  const url = fileUrl(base, entry.file);
  const response = await get(url, `stage file '${entry.file}' listed in the manifest`, options.fetch);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.byteLength !== entry.size_bytes) {
    throw new BundleError(
      `size mismatch for '${entry.file}' in ${base.href}: the manifest says ${entry.size_bytes} bytes, the ` +
        `file has ${bytes.byteLength}. The file is truncated, corrupt or from another export.`,
    );
  }
  if (options.verifyHashes) {
    const digest = await sha256Hex(bytes);
    if (digest !== entry.sha256.toLowerCase()) {
      throw new BundleError(
        `sha256 mismatch for '${entry.file}' in ${base.href}: the manifest says ${entry.sha256}, the file ` +
          `has ${digest}. The file is corrupt or from another export.`,
      );
    }
  }
  return bytes;
}
