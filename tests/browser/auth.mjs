// The IIIF Authorization Flow 2.0 client flow in Debian's Chromium, from a page on another origin
// than the image server: probe -> (click) open the access service -> it closes -> the token service
// in a hidden iframe -> postMessage -> probe again with the token -> draw the restricted image.
// The viewer page lives at http://viewer.example.test:PORT (served here), iiifd behind the shipped
// nginx Auth 2.0 site at http://images.example.test:PORT2 (all names mapped to 127.0.0.1): two
// origins of one site. nginx signs the visitor in at the access service with basic authentication
// (the browser answers its challenge with USER:PASS). Then a second page on another origin asks for a
// token with the first one's cookie (its own sign-in window closes without reaching iiifd): it must
// get invalidOrigin.
// Usage: node auth.mjs INFO_URL VIEWER_ORIGIN OTHER_ORIGIN USER:PASS   (prints one JSON line)
import { chromium } from "playwright-core";
import http from "node:http";

const [, , infoUrl, viewerOrigin, otherOrigin, credentials] = process.argv;
const [username, password] = credentials.split(":");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-quic", "--disable-sync",
    "--host-resolver-rules=MAP viewer.example.test 127.0.0.1, MAP other.example.test 127.0.0.1, MAP images.example.test 127.0.0.1"],
});

// The client: what a viewer does (Auth 2.0 §7.1), in the page.
const client = `<!doctype html><html><body><button id="signin">Sign in</button><div id="out"></div><script>
const log = [];
window.flow = { log, done: false };
const getToken = (tokenService, messageId) => new Promise((resolve) => {
  const frame = document.createElement("iframe");
  frame.style.display = "none";
  window.addEventListener("message", function on(e) {
    if (!e.data || e.data.messageId !== messageId) return;
    window.removeEventListener("message", on);
    frame.remove();
    resolve({ from: e.origin, data: e.data });
  });
  frame.src = tokenService + "?messageId=" + encodeURIComponent(messageId) + "&origin=" + encodeURIComponent(location.origin);
  document.body.appendChild(frame);
});
const probe = async (url, token) => {
  const r = await fetch(url, token ? { headers: { Authorization: "Bearer " + token } } : {});
  return { http: r.status, ...(await r.json()) };
};
(async () => {
  const info = await (await fetch(${JSON.stringify(infoUrl)})).json();
  const ps = info.service.find((s) => s.type === "AuthProbeService2");
  const access = ps.service[0];
  const tokenService = access.service.find((s) => s.type === "AuthAccessTokenService2").id;
  const first = await probe(ps.id);
  log.push({ step: "probe", status: first.status, http: first.http });
  // Before signing in, the token service says why there is no token.
  const before = await getToken(tokenService, "m0");
  log.push({ step: "token-before", type: before.data.type, profile: before.data.profile, from: before.from });
  // Active profile: the visitor clicks, the access service opens in a new window and closes itself.
  await new Promise((resolve) => {
    document.getElementById("signin").addEventListener("click", () => {
      const w = window.open(access.id + "?origin=" + encodeURIComponent(location.origin), "_blank");
      const t = setInterval(() => { if (!w || w.closed) { clearInterval(t); resolve(); } }, 100);
    }, { once: true });
    // Only now may the visitor click (a click before the listener would be lost).
    window.flow.ready = true;
  });
  log.push({ step: "access-closed" });
  const got = await getToken(tokenService, "m1");
  log.push({ step: "token", type: got.data.type, profile: got.data.profile || null, from: got.from });
  const token = got.data.accessToken;
  const second = await probe(ps.id, token);
  log.push({ step: "probe-with-token", status: second.status, http: second.http });
  if (second.status === 200) {
    const img = new Image();
    img.src = info.id + "/full/!400,400/0/default.jpg";
    await img.decode().catch((e) => log.push({ step: "image-error", error: String(e) }));
    img.id = "drawn";
    document.getElementById("out").appendChild(img);
    // The image is drawn by the browser (with the cookie); its pixels cannot be read back by the
    // page (a cross-origin image taints a canvas), so the test screenshots the element instead.
    log.push({ step: "image", width: img.naturalWidth, height: img.naturalHeight });
  }
  window.flow.done = true;
})().catch((e) => { log.push({ step: "error", error: String(e) }); window.flow.done = true; });
</script></body></html>`;

// The viewer pages come from a real server on loopback (as iiifd does), so the browser sees both in
// the same address space; the origin's port is the one given.
const port = Number(new URL(viewerOrigin).port);
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(client);
});
await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));

const run = async (context, origin) => {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(origin + "/viewer.html");
  // The button is live once the flow has probed and asked for a token; a loaded machine may take a
  // while to get there, and a click before it would be lost.
  await page.waitForFunction(() => window.flow && (window.flow.ready || window.flow.done), null, { timeout: 120000 });
  if (await page.evaluate(() => !window.flow.done)) await page.click("#signin");
  await page.waitForFunction(() => window.flow && window.flow.done, null, { timeout: 120000 });
  const log = await page.evaluate(() => window.flow.log);
  const drawn = await page.$("#drawn");
  if (drawn) {
    // Grey-level spread of the element as the browser shows it.
    const png = await drawn.screenshot();
    const check = await browser.newPage();
    const spread = await check.evaluate(async (b64) => {
      const img = new Image();
      img.src = "data:image/png;base64," + b64;
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let sum = 0, sq = 0, n = 0;
      for (let i = 0; i < d.length; i += 16) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += v; sq += v * v; n++; }
      return Math.sqrt(sq / n - (sum / n) ** 2);
    }, png.toString("base64"));
    await check.close();
    log.push({ step: "shown", stddev: spread, screenshotBytes: png.length });
  }
  await page.close();
  return { origin, log, pageErrors: errors };
};

try {
  const context = await browser.newContext({ httpCredentials: { username, password } });
  const runs = [await run(context, viewerOrigin)];
  // The other origin's sign-in window closes without reaching iiifd, so the cookie stays the first
  // origin's.
  await context.route("**/auth/access?**", (route) =>
    route.fulfill({ contentType: "text/html", body: "<script>window.close()</script>" }));
  runs.push(await run(context, otherOrigin));
  console.log(JSON.stringify(runs));
} finally {
  await browser.close();
  server.close();
}
