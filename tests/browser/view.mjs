// Drive OpenSeadragon in Debian's Chromium over an iiifd viewer page: load, zoom to full resolution,
// pan across the image, and report tile failures, tiles loaded and whether the canvas shows anything.
// With --offline, the viewer script cannot be loaded (as on a machine without internet access): report
// whether the page fell back to its still image and whether that image shows anything.
// Usage: node view.mjs VIEWER_URL SCREENSHOT_PNG [--offline]     (prints one JSON line)
import { chromium } from "playwright-core";
import { fileURLToPath } from "node:url";
import path from "node:path";

const [, , url, shot, mode] = process.argv;
const offline = mode === "--offline";
const here = path.dirname(fileURLToPath(import.meta.url));
const osd = path.join(here, "node_modules/openseadragon/build/openseadragon/openseadragon.min.js");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-quic", "--disable-sync"],
});

// Mean and standard deviation of the grey level over an image or canvas, sampled.
const stats = (el) => {
  const c = document.createElement("canvas");
  c.width = el.naturalWidth || el.width;
  c.height = el.naturalHeight || el.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(el, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, n = 0;
  for (let i = 0; i < d.length; i += 16) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += v; sq += v * v; n++; }
  const mean = sum / n;
  return { width: c.width, height: c.height, stddev: Math.sqrt(sq / n - mean * mean) };
};

try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  if (offline) {
    // The script's host is unreachable: the request fails as it would without a network.
    await page.route("**/openseadragon*.js", (route) => route.abort("internetdisconnected"));
    await page.goto(url);
    await page.waitForFunction(() => {
      const img = document.getElementById("still-image");
      return window.viewerMode === "still" && img && img.complete && img.naturalWidth > 0;
    }, null, { timeout: 60000 });
    const result = await page.evaluate((fn) => {
      const img = document.getElementById("still-image");
      const s = eval(fn)(img);
      const note = document.getElementById("still").innerText;
      return { mode: window.viewerMode, image: img.src, ...s, note };
    }, `(${stats})`);
    const png = await page.screenshot({ path: shot });
    console.log(JSON.stringify({ ...result, pageErrors: errors, screenshotBytes: png.length }));
  } else {
    // The page loads OpenSeadragon from a CDN; this machine has no internet, so serve the npm copy.
    await page.route("**/openseadragon*.js", (route) => route.fulfill({ path: osd, contentType: "application/javascript" }));
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
    const result = await page.evaluate((fn) => {
      const s = eval(fn)(viewer.drawer.canvas);
      return { mode: window.viewerMode, failures: window.tileFailures, loaded: window.tilesLoaded, stddev: s.stddev,
        level: viewer.world.getItemAt(0).lastDrawn.reduce((m, t) => Math.max(m, t.level), 0),
        maxLevel: viewer.world.getItemAt(0).source.maxLevel };
    }, `(${stats})`);
    const png = await page.screenshot({ path: shot });
    console.log(JSON.stringify({ ...result, pageErrors: errors, screenshotBytes: png.length }));
  }
} finally {
  await browser.close();
}
