// keras-dmpo-web: a keras_dmpo early-exit export bundle in the browser.

export { BundleError } from './bundle_error.js';
export { DYNAMIC_BATCH_MESSAGE, FORMAT_VERSION, MANIFEST_NAME, validateManifest } from './manifest.js';
export { argmax, CRITERIA, ExitPolicy, exitScore, passes, temper } from './policy.js';
export { pixelsToModelSpace, preprocessImage } from './preprocess.js';
export { StagedRuntime } from './runtime.js';
