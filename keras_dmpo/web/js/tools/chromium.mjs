// Launching the system's Chromium headless with puppeteer-core, for the
// screenshot script and the browser tests. puppeteer-core is found in the
// node_modules folder named by KERAS_DMPO_NODE_MODULES (the locked install
// keras_dmpo.web.npm_deps makes), the browser at KERAS_DMPO_CHROMIUM.

import { createRequire } from 'node:module';
import path from 'node:path';

function requireFromModules() {
  const modules = process.env.KERAS_DMPO_NODE_MODULES;
  if (!modules) throw new Error('KERAS_DMPO_NODE_MODULES is not set (the node_modules folder with puppeteer-core).');
  return createRequire(path.join(path.dirname(modules), 'resolve-from-here.js'));
}

/** A headless Chromium (as root it needs --no-sandbox). */
export async function launchChromium() {
  const puppeteer = requireFromModules()('puppeteer-core');
  const executablePath = process.env.KERAS_DMPO_CHROMIUM;
  if (!executablePath) throw new Error('KERAS_DMPO_CHROMIUM is not set (the Chromium executable).');
  return puppeteer.launch({
    executablePath,
    headless: true,
    protocolTimeout: 180000,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run', '--no-default-browser-check'],
  });
}

/** Collects what went wrong on a page: console errors, uncaught errors, failed requests. */
export function watchPage(page) {
  const problems = { consoleErrors: [], pageErrors: [], failedRequests: [] };
  page.on('console', (message) => {
    if (message.type() === 'error') problems.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => problems.pageErrors.push(String(error && error.message ? error.message : error)));
  page.on('requestfailed', (request) => problems.failedRequests.push(`${request.url()}: ${request.failure()?.errorText}`));
  page.on('response', (response) => {
    if (response.status() >= 400) problems.failedRequests.push(`${response.url()}: HTTP ${response.status()}`);
  });
  return problems;
}

/**
 * Open the demo page and wait until it has loaded the bundle (or refused it)
 * and, when asked, run its sample images.
 * @returns {Promise<{ready: {ok: boolean, error?: string}, errorPanel: {visible: boolean, text: string}}>}
 */
export async function openDemoPage(page, url, { waitSamples = true, timeoutMs = 120000 } = {}) {
  page.setDefaultTimeout(timeoutMs);
  await page.goto(url, { waitUntil: 'load' });
  // A boolean: a promise returned here would be awaited, and a refused bundle's never settles the wait.
  await page.waitForFunction(() => Boolean(window.kerasDmpo && window.kerasDmpo.ready));
  const ready = await page.evaluate(() =>
    window.kerasDmpo.ready.then(
      () => ({ ok: true }),
      (error) => ({ ok: false, error: String(error && error.message ? error.message : error) }),
    ),
  );
  if (ready.ok && waitSamples) await page.evaluate(() => window.kerasDmpo.samplesDone.then(() => null));
  const errorPanel = await page.evaluate(() => {
    const panel = document.getElementById('error-panel');
    const box = panel.getBoundingClientRect();
    return { visible: !panel.hidden && box.width > 0 && box.height > 0, text: panel.innerText };
  });
  return { ready, errorPanel };
}
