// node screenshot.mjs URL OUT.png [WIDTH] [HEIGHT]: the demo page, once its
// samples have run, as a full-page PNG. Prints a JSON summary of the page's
// problems (console errors etc.) on stdout.

import { launchChromium, openDemoPage, watchPage } from './chromium.mjs';

const [url, out, width = '1200', height = '900'] = process.argv.slice(2);
if (!url || !out) {
  console.error('usage: node screenshot.mjs URL OUT.png [WIDTH] [HEIGHT]');
  process.exit(2);
}
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  await page.setViewport({ width: Number(width), height: Number(height) });
  const problems = watchPage(page);
  const state = await openDemoPage(page, url);
  await page.screenshot({ path: out, fullPage: true });
  console.log(JSON.stringify({ ...state, ...problems }));
} finally {
  await browser.close();
}
