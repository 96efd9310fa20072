// Decode images in Debian's Chromium, as a page would show them: for each URL, load it in an <img>
// of a page on the same origin, draw it on a canvas and report its size and the colour at a few
// points (fractions of the width and height).
// Usage: node decode.mjs PAGE_URL IMAGE_URL...      (prints one JSON line: [{url, ok, width, height, samples}])
import { chromium } from "playwright-core";

const [, , pageUrl, ...urls] = process.argv;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-quic", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  const results = [];
  for (const url of urls) {
    results.push(await page.evaluate(async (url) => {
      const img = new Image();
      const loaded = await new Promise((done) => { img.onload = () => done(true); img.onerror = () => done(false); img.src = url; });
      if (!loaded) return { url, ok: false };
      const c = document.createElement("canvas");
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const samples = [];
      for (const [fx, fy] of [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5]]) {
        const d = ctx.getImageData(Math.floor(fx * c.width), Math.floor(fy * c.height), 1, 1).data;
        samples.push([d[0], d[1], d[2], d[3]]);
      }
      return { url, ok: true, width: img.naturalWidth, height: img.naturalHeight, samples };
    }, url));
  }
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
