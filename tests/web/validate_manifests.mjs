// node validate_manifests.mjs TEXTS.json: validateManifest (the web runtime's
// manifest checks) on each manifest text; prints one JSON line, per text null
// (accepted) or the error's message. A text that is not JSON is refused as
// the runtime refuses it.

import { readFile } from 'node:fs/promises';

import { validateManifest } from '../../keras_dmpo/web/js/src/manifest.js';

const texts = JSON.parse(await readFile(process.argv[2], 'utf8'));
const outcomes = texts.map((text) => {
  try {
    validateManifest(JSON.parse(text));
    return null;
  } catch (error) {
    return `${error.name}: ${error.message}`;
  }
});
console.log(JSON.stringify(outcomes));
