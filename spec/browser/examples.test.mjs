// Real-browser specs: headless Chromium's EventSource against each example page.
// Every wait has a deadline; a screenshot of each page goes to spec/artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.SLUICE_BIN || join(root, "build", "sluice");
const artifacts = join(root, "spec", "artifacts");
mkdirSync(artifacts, { recursive: true });
const WAIT = 20000;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

// Starts the gateway on an example; resolves once it logs that it is serving.
async function gateway(example, env = {}) { return gatewayOn(await freePort(), example, env); }

async function gatewayOn(port, example, env = {}) {
  const proc = spawn(bin, ["--listen", `127.0.0.1:${port}`, join(root, "examples", example)], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  proc.stderr.on("data", (d) => { log += d; });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("sluice did not start:\n" + log)), WAIT);
    const check = () => { if (/ serving /.test(log)) { clearTimeout(timer); resolve(); } };
    proc.stderr.on("data", check);
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`sluice exited ${code}:\n${log}`)); });
  });
  return {
    url: (path = "/") => `http://127.0.0.1:${port}${path}`,
    log: () => log,
    stop: () => new Promise((resolve) => {
      proc.removeAllListeners("exit");
      proc.on("exit", (code) => resolve(code));
      proc.kill("SIGTERM");
    }),
  };
}

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); });

async function page() {
  const ctx = await browser.newContext();
  return ctx.newPage();
}
const shot = (p, name) => p.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
const text = (p, sel) => p.locator(sel).textContent();

test("hello: the page shows the one-off event", async () => {
  const gw = await gateway("hello.lua");
  const p = await page();
  await p.goto(gw.url("/"));
  await p.waitForFunction(() => document.getElementById("out").textContent === "Hello, world!", null, { timeout: WAIT });
  await shot(p, "hello");
  await p.context().close();
  assert.equal(await gw.stop(), 0);
});

test("clock: EventSource reconnects after retry with Last-Event-ID; the ticks run on with no gap and no duplicate", async () => {
  const gw = await gateway("clock.lua");
  const p = await page();
  await p.goto(gw.url("/?interval=0.05"));
  // 12 ticks take three responses (five ticks each) and two reconnects
  await p.waitForFunction(() => Number(document.getElementById("count").textContent) >= 12, null, { timeout: WAIT });
  const ticks = await p.$$eval("#ticks li", (lis) => lis.map((li) => Number(li.dataset.tick)).reverse());
  assert.deepEqual(ticks, Array.from({ length: ticks.length }, (_, i) => i + 1));
  assert.ok(Number(await text(p, "#opens")) >= 3, "reconnected at least twice");
  // Without Last-Event-ID each reconnect would start again at 1: the run above would repeat ticks.
  await shot(p, "clock");
  await p.context().close();
  assert.equal(await gw.stop(), 0);
});

test("tokens: the answer streams in token by token, then done", async () => {
  const gw = await gateway("tokens.lua");
  const p = await page();
  await p.goto(gw.url("/"));
  await p.click("button");
  await p.waitForFunction(() => document.getElementById("status").dataset.done === "1", null, { timeout: WAIT });
  assert.match(await text(p, "#answer"), /^Server-Sent Events keep one HTTP response open/);
  assert.match(await text(p, "#status"), /^done: \d+ tokens$/);
  await shot(p, "tokens");
  await p.context().close();
  assert.equal(await gw.stop(), 0);
});

test("relay: one page asks, a second watches the same generation, both see the whole answer", async () => {
  const port = await freePort();
  const gw = await gatewayOn(port, "relay.lua", { RELAY_SELF: `http://127.0.0.1:${port}` });
  const a = await page();
  await a.goto(gw.url("/"));
  await a.fill("#prompt", "hello from the browser");
  await a.click("button");
  await a.waitForSelector("#link a", { timeout: WAIT });
  const href = await a.locator("#link a").getAttribute("href");
  const b = await page();
  await b.goto(gw.url(href));
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.getElementById("status").dataset.done === "1", null, { timeout: WAIT });
    assert.match(await text(p, "#status"), /^done: /);
    assert.match(await text(p, "#answer"), /^You said: hello from the browser\. Here is a streamed answer/);
  }
  assert.equal(await text(a, "#answer"), await text(b, "#answer"));
  await shot(b, "relay");
  await a.context().close();
  await b.context().close();
  assert.equal(await gw.stop(), 0);
});

test("authz: a token the auth service allows reads the channel; one it refuses does not", async () => {
  const port = await freePort();
  const gw = await gatewayOn(port, "authz.lua", { AUTHZ_SELF: `http://127.0.0.1:${port}` });
  const p = await page();
  await p.goto(gw.url("/"));
  await p.click("#read button");
  await p.waitForFunction(() => document.getElementById("status").dataset.state === "open", null, { timeout: WAIT });
  await p.fill("#text", "from the page");
  await p.click("#post button");
  await p.waitForFunction(() => document.querySelector("#events li")?.textContent === "from the page", null, { timeout: WAIT });
  await shot(p, "authz");
  await p.fill("#token", "news-only");
  await p.fill("#channel", "sports");
  await p.click("#read button");
  await p.waitForFunction(() => document.getElementById("status").dataset.state === "refused", null, { timeout: WAIT });
  await p.context().close();
  assert.equal(await gw.stop(), 0);
});

test("chat: two pages see each other's messages", async () => {
  const gw = await gateway("chat.lua", { CHAT_TOKEN: "browser-secret" });
  const a = await page(), b = await page();
  for (const p of [a, b]) {
    await p.goto(gw.url("/?room=e2e"));
    await p.waitForFunction(() => document.getElementById("status").dataset.open === "1", null, { timeout: WAIT });
  }
  const say = async (p, user, msg) => {
    await p.fill("#token", "browser-secret");
    await p.fill("#user", user);
    await p.fill("#text", msg);
    await p.click("button");
  };
  const sees = (p, line) => p.waitForFunction(
    (l) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === l), line, { timeout: WAIT });
  await say(a, "ann", "hello from a");
  await sees(b, "ann: hello from a");
  await say(b, "bob", "hi back from b");
  await sees(a, "bob: hi back from b");
  await sees(a, "ann: hello from a");
  // a wrong token is refused and nothing is published
  await b.fill("#token", "wrong");
  await b.fill("#text", "should not appear");
  await b.click("button");
  await b.waitForFunction(() => document.getElementById("status").textContent === "not sent: 401", null, { timeout: WAIT });
  await shot(a, "chat-a");
  await shot(b, "chat-b");
  assert.equal((await a.$$eval("#messages li", (lis) => lis.length)), 2);
  await a.context().close();
  await b.context().close();
  assert.equal(await gw.stop(), 0);
});

test("progress: three jobs fill their bars and finish", async () => {
  const gw = await gateway("progress.lua");
  const p = await page();
  await p.goto(gw.url("/?delay=0.01"));
  await p.waitForFunction(
    () => ["import", "resize", "report"].every((n) => document.getElementById(n + "-label").dataset.done === "1"),
    null, { timeout: WAIT });
  for (const n of ["import", "resize", "report"]) {
    assert.equal(await p.$eval(`#${n}-bar`, (el) => el.style.width), "100%");
  }
  await shot(p, "progress");
  await p.context().close();
  assert.equal(await gw.stop(), 0);
});

test("presence: pages see who is here and each other's shouts", async () => {
  const gw = await gateway("presence.lua");
  const ann = await page(), bob = await page();
  await ann.goto(gw.url("/?name=ann"));
  await ann.waitForFunction(() => document.getElementById("names").textContent === "ann", null, { timeout: WAIT });
  await bob.goto(gw.url("/?name=bob"));
  for (const p of [ann, bob]) {
    await p.waitForFunction(() => document.getElementById("names").textContent === "ann, bob", null, { timeout: WAIT });
  }
  await bob.fill("#text", "hello ann");
  await bob.click("button");
  await ann.waitForFunction(
    () => [...document.querySelectorAll("#shouts li")].some((li) => li.textContent === "bob: hello ann"), null, { timeout: WAIT });
  await shot(ann, "presence");
  await bob.context().close();
  await ann.waitForFunction(() => document.getElementById("names").textContent === "ann", null, { timeout: WAIT });
  await ann.context().close();
  assert.equal(await gw.stop(), 0);
});

test("mercure: the page subscribes and publishes; private updates reach only the page with a token", async () => {
  const gw = await gateway("mercure.lua");
  const anon = await page(), authed = await page();
  const has = (p, data) => p.waitForFunction(
    (d) => [...document.querySelectorAll("#events li")].some((li) => li.textContent.endsWith(": " + d)), data, { timeout: WAIT });
  await anon.goto(gw.url("/"));
  await anon.click("#subscribe button");
  await anon.waitForFunction(() => document.getElementById("state").textContent === "subscribed", null, { timeout: WAIT });
  await authed.goto(gw.url("/"));
  await authed.check("#authorized");
  await authed.click("#subscribe button");
  await authed.waitForFunction(() => document.getElementById("state").textContent === "subscribed", null, { timeout: WAIT });
  await authed.fill("#data", "for token holders");
  await authed.check("#private");
  await authed.click("#publish button");
  await has(authed, "for token holders");
  // the hub answers the update's id: a urn:uuid: UUIDv7
  await authed.waitForFunction(() => /^published urn:uuid:[0-9a-f-]{8}-[0-9a-f-]{4}-7/.test(document.getElementById("published").textContent),
    null, { timeout: WAIT });
  await anon.fill("#data", "for everyone");
  await anon.click("#publish button");
  await has(anon, "for everyone");
  await has(authed, "for everyone");
  const anonLines = await anon.locator("#events li").allTextContents();
  assert.ok(!anonLines.some((l) => l.endsWith(": for token holders")), anonLines.join("\n"));
  await shot(authed, "mercure");
  await anon.context().close();
  await authed.context().close();
  assert.equal(await gw.stop(), 0);
});
