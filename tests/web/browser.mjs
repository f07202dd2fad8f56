// node browser.mjs SPEC.json: visit each page of the spec in one headless
// Chromium and print one JSON line with what each visit saw.
//
// SPEC: {"visits": [{"url": ..., "evaluate": "<JS expression, may be a
// promise>", "upload": "<image file for the drop zone>", "waitSamples": true,
// "timeoutMs": 120000}, ...]}
// Each result: {ready, errorPanel, value (of evaluate), dropped (the drop
// zone's text), consoleErrors, pageErrors, failedRequests, crossOriginIsolated}.

import { readFile } from 'node:fs/promises';

import { launchChromium, openDemoPage, watchPage } from '../../keras_dmpo/web/js/tools/chromium.mjs';

const spec = JSON.parse(await readFile(process.argv[2], 'utf8'));
const browser = await launchChromium();
const results = [];
try {
  for (const visit of spec.visits) {
    const page = await browser.newPage();
    const problems = watchPage(page);
    const started = Date.now();
    try {
      const state = await openDemoPage(page, visit.url, {
        waitSamples: visit.waitSamples ?? true,
        timeoutMs: visit.timeoutMs ?? 120000,
      });
      const value = visit.evaluate ? await page.evaluate(visit.evaluate) : null;
      let dropped = null;
      if (visit.upload) {
        // The drop zone's file input, as a person choosing a file would use it.
        await (await page.$('#file-input')).uploadFile(visit.upload);
        await page.waitForSelector('#drop-result .card, #drop-result .warning');
        dropped = await page.evaluate(() => document.getElementById('drop-result').innerText);
      }
      const crossOriginIsolated = await page.evaluate(() => globalThis.crossOriginIsolated === true);
      results.push({ ...state, value, dropped, crossOriginIsolated, ...problems });
    } catch (error) {
      // Say what the page showed, not only that a wait timed out.
      const status = await page.evaluate(() => document.body?.innerText.slice(0, 2000)).catch(() => null);
      throw new Error(`${visit.url}: ${error.message}\npage: ${status}\nproblems: ${JSON.stringify(problems)}`);
    }
    console.error(`visited ${visit.url} in ${Date.now() - started} ms`);
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));
