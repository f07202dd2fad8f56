// Loading LiteRT.js's wasm once per page, threaded where the page allows it.
//
// The threaded build needs SharedArrayBuffer, which browsers give only to
// cross-origin isolated pages (COOP same-origin + COEP require-corp headers);
// elsewhere the single-threaded build runs.

import { getGlobalLiteRtPromise, loadLiteRt, supportsFeature } from '@litertjs/core';

/** @type {Promise<{threads: boolean|null}>|null} this module's load, once started */
let loading = null;

/**
 * The wasm folder of the @litertjs/core the page's import map points at.
 * @returns {string}
 */
export function defaultWasmUrl() {
  return new URL('../wasm/', import.meta.resolve('@litertjs/core')).href;
}

/** Whether this page can run the threaded wasm. */
export async function threadsAvailable() {
  if (globalThis.crossOriginIsolated !== true) return false;
  return (await supportsFeature('threads')) && (await supportsFeature('relaxedSimd'));
}

/**
 * LiteRT.js, loaded on the first call; later calls share that load. A page
 * that loaded LiteRT.js itself keeps its choice (`threads` is then null:
 * unknown).
 * @param {{wasmUrl?: string, threads?: boolean}} [options]
 * @returns {Promise<{threads: boolean|null}>}
 */
export function ensureLiteRt(options = {}) {
  if (!loading) {
    loading = load(options).catch((error) => {
      loading = null; // a later call may try again
      throw error;
    });
  }
  return loading;
}

async function load(options) {
  const pending = getGlobalLiteRtPromise();
  if (pending) {
    await pending;
    return { threads: null };
  }
  const threads = options.threads ?? (await threadsAvailable());
  if (threads && !(await threadsAvailable())) {
    throw new Error(
      'threads: true needs a cross-origin isolated page (Cross-Origin-Opener-Policy: same-origin and ' +
        'Cross-Origin-Embedder-Policy: require-corp) in a browser with wasm threads and relaxed SIMD; ' +
        `this page has crossOriginIsolated=${globalThis.crossOriginIsolated === true}.`,
    );
  }
  // The wasm writes its INFO and WARNING log lines to stderr, which
  // emscripten sends to console.error; pass them on at their own level. The
  // loader hands a global `Module` to the wasm as its settings, then clears it.
  if (globalThis.Module === undefined) globalThis.Module = { printErr: logLiteRtLine };
  await loadLiteRt(options.wasmUrl ?? defaultWasmUrl(), { threads });
  return { threads };
}

/** @param {string} line one line LiteRT's wasm wrote to stderr */
function logLiteRtLine(line) {
  if (/^(INFO|VERBOSE|DEBUG)\b/.test(line)) console.debug(line);
  else if (/^WARNING\b/.test(line)) console.warn(line);
  else console.error(line);
}
