// Drive OpenSeadragon in Debian's Chromium over an iiifd viewer page: load, zoom to full resolution,
// pan across the image, and report tile failures, tiles loaded and whether the canvas shows anything.
// Usage: node view.mjs VIEWER_URL SCREENSHOT_PNG     (prints one JSON line)
import { chromium } from "playwright-core";
import { fileURLToPath } from "node:url";
import path from "node:path";

const [, , url, shot] = process.argv;
const here = path.dirname(fileURLToPath(import.meta.url));
const osd = path.join(here, "node_modules/openseadragon/build/openseadragon/openseadragon.min.js");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-quic", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
  // The page loads OpenSeadragon from a CDN; this machine has no internet, so serve the npm copy.
  await page.route("**/openseadragon*.js", (route) => route.fulfill({ path: osd, contentType: "application/javascript" }));
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const settled = () => page.waitForFunction(
    () => window.viewer && viewer.world.getItemCount() > 0 && viewer.world.getItemAt(0).getFullyLoaded(),
    null, { timeout: 60000 });
  await settled();
  // Full resolution, then several places across the image.
  await page.evaluate(() => viewer.viewport.zoomTo(viewer.viewport.getMaxZoom(), null, true));
  await settled();
  for (const [x, y] of [[0.1, 0.1], [0.9, 0.1], [0.5, 0.33], [0.1, 0.6], [0.95, 0.64]]) {
    await page.evaluate(([x, y]) => viewer.viewport.panTo(new OpenSeadragon.Point(x, y), true), [x, y]);
    await page.waitForTimeout(50);
    await settled();
  }
  const result = await page.evaluate(() => {
    const c = viewer.drawer.canvas;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 16) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += v; sq += v * v; n++; }
    const mean = sum / n;
    return { failures: window.tileFailures, loaded: window.tilesLoaded, stddev: Math.sqrt(sq / n - mean * mean),
      level: viewer.world.getItemAt(0).lastDrawn.reduce((m, t) => Math.max(m, t.level), 0),
      maxLevel: viewer.world.getItemAt(0).source.maxLevel };
  });
  const png = await page.screenshot({ path: shot });
  console.log(JSON.stringify({ ...result, pageErrors: errors, screenshotBytes: png.length }));
} finally {
  await browser.close();
}
