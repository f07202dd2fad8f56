// node web_latency.mjs URL CONFIG.json: batch-1 latency of a web bundle in
// headless Chromium (LiteRT.js), per exit policy. CONFIG holds
// {"policies": [...ExitPolicy dicts], "numThreads": n, "repeats": r,
// "inputs": "bench_inputs.f32"} (model-space float32 images inside the
// bundle). Prints one JSON line: per policy the median ms per image and the
// FLOPs share, and the monolithic graph's median ms per image.

import { readFileSync } from 'node:fs';
import { launchChromium, openDemoPage, watchPage } from '../keras_dmpo/web/js/tools/chromium.mjs';

const [url, configPath] = process.argv.slice(2);
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const problems = watchPage(page);
  const state = await openDemoPage(page, url, { waitSamples: true, timeoutMs: 600000 });
  if (!state.ready.ok) throw new Error(`the page refused the bundle: ${state.ready.error}`);
  page.on('console', (message) => process.stderr.write(`page: ${message.text()}\n`));
  // One evaluate per measurement: each stays well inside puppeteer's protocol timeout.
  const setup = await page.evaluate(async ({ numThreads, inputs }) => {
    const { api } = window.kerasDmpo;
    const runtime = await api.StagedRuntime.load('/bundle/', { numThreads });
    const [h, w, c] = runtime.manifest.image_shape;
    const data = new Float32Array(await (await fetch(`/bundle/${inputs}`)).arrayBuffer());
    const size = h * w * c;
    const images = Array.from({ length: data.length / size }, (_, i) => data.subarray(i * size, (i + 1) * size));
    for (const image of images.slice(0, 10)) {
      await runtime.predict(image);
      await runtime.predictMonolithic(image);
    }
    const median = (values) => values.slice().sort((a, b) => a - b)[Math.floor(values.length / 2)];
    window.bench = {
      runtime,
      images,
      async msPerImage(run, repeats) {
        const times = [];
        for (let r = 0; r < repeats; r++) {
          const start = performance.now();
          for (const image of images) await run(image);
          times.push((performance.now() - start) / images.length);
        }
        return median(times);
      },
    };
    return { threads: runtime.threads, numThreads: runtime.numThreads, images: images.length };
  }, config);
  const monolithicMs = await page.evaluate(
    (repeats) => window.bench.msPerImage((image) => window.bench.runtime.predictMonolithic(image), repeats),
    config.repeats,
  );
  const budgets = [];
  for (const policy of config.policies) {
    budgets.push(
      await page.evaluate(
        async (policy, repeats) => {
          const { runtime, images } = window.bench;
          runtime.policy = policy;
          const exits = [];
          let flops = 0;
          for (const image of images) {
            const p = await runtime.predict(image);
            exits.push(p.exitIndex);
            flops += p.fractionOfFull;
          }
          const ms = await window.bench.msPerImage((image) => runtime.predict(image), repeats);
          return { ms, flopsShare: flops / images.length, exits };
        },
        policy,
        config.repeats,
      ),
    );
  }
  await page.evaluate(() => window.bench.runtime.delete());
  const result = { ...setup, monolithicMs, budgets };
  console.log(JSON.stringify({ ...result, crossOriginIsolated: await page.evaluate(() => crossOriginIsolated), problems }));
} finally {
  await browser.close();
}
