// The dashboard (sync_kit::observe) in a real browser: the system's headless Chromium, driven by
// playwright-core (no browser download). Run by node/tests/dashboard.rs; by hand:
//
//   node tests/browser/dashboard.mjs --url http://127.0.0.1:7879/ \
//       --locks sessions,mailboxes-00,mempool --panels Raft,Ledger --screenshot target/dashboard.png
//   node tests/browser/dashboard.mjs --url http://127.0.0.1:7880/ --cycle left,right \
//       --screenshot target/dashboard-demo.png
//
// Checks: the page loads and renders with no console error or uncaught exception; every lock of
// --locks is a row of the lock table with non-zero acquisitions; every panel of --panels is
// shown; with --cycle, a refused wait-for cycle is drawn as an <svg> naming those locks. Saves a
// full-page screenshot at a laptop's viewport (1440x900). Prints one JSON line; exit code 0 if
// every check passed, 1 otherwise, 2 if the browser could not run.

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

function args() {
  const out = { url: null, locks: [], panels: [], cycle: [], screenshot: null, timeout: 30000 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    const list = () => (value || "").split(",").filter(Boolean);
    if (key === "--url") out.url = value;
    else if (key === "--locks") out.locks = list();
    else if (key === "--panels") out.panels = list();
    else if (key === "--cycle") out.cycle = list();
    else if (key === "--screenshot") out.screenshot = value;
    else if (key === "--timeout-ms") out.timeout = Number(value);
    else throw new Error(`unknown argument ${key}`);
  }
  if (!out.url) throw new Error("--url is required");
  return out;
}

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      return execFileSync("which", [name], { encoding: "utf8" }).trim();
    } catch {
      // next candidate
    }
  }
  throw new Error("no chromium on PATH (set CHROMIUM)");
}

const opts = args();
const failures = [];
const consoleErrors = [];
let browser;
try {
  browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    // As root (CI containers) Chromium refuses to start with its sandbox.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: `cannot launch chromium: ${error.message}` }));
  process.exit(2);
}

try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(msg.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(`uncaught: ${error.message}`));
  const response = await page.goto(opts.url, { waitUntil: "load" });
  if (!response || !response.ok()) failures.push(`GET ${opts.url}: ${response && response.status()}`);
  const type = response ? response.headers()["content-type"] || "" : "";
  if (!type.startsWith("text/html")) failures.push(`content-type ${type}`);

  // The first poll has rendered: the status says live and the table has rows.
  await page.waitForSelector("#status.ok", { timeout: opts.timeout });
  await page.waitForSelector("#locks tbody tr", { timeout: opts.timeout });

  const rows = async () =>
    page.$$eval("#locks tbody tr", (trs) =>
      trs.map((tr) => ({
        name: tr.dataset.lock,
        acquisitions: Number(tr.querySelector("td.acquisitions").textContent.replace(/,/g, "")),
      })),
    );
  // Wait until every expected lock shows acquisitions (the page polls every second).
  let table = [];
  const deadline = Date.now() + opts.timeout;
  for (;;) {
    table = await rows();
    const missing = opts.locks.filter((name) => !table.some((r) => r.name === name && r.acquisitions > 0));
    if (missing.length === 0) break;
    if (Date.now() > deadline) {
      failures.push(`locks without acquisitions in the table: ${missing.join(", ")}`);
      break;
    }
    await page.waitForTimeout(500);
  }

  for (const title of opts.panels) {
    const found = await page.$(`#panels section[data-panel="${title}"] tr`);
    if (!found) failures.push(`panel ${title} missing or empty`);
  }

  // Sorting: clicking "lock" sorts by name, ascending.
  await page.click('#locks th[data-key="name"]');
  const names = (await rows()).map((r) => r.name);
  const sorted = [...names].sort((a, b) => a.localeCompare(b));
  if (names.join("\n") !== sorted.join("\n")) failures.push("clicking the lock column did not sort by name");
  await page.click('#locks th[data-key="acquisitions"]');

  let cycle = null;
  if (opts.cycle.length) {
    try {
      const handle = await page.waitForFunction(
        (wanted) => {
          for (const card of document.querySelectorAll('#refusals .refusal[data-kind="deadlock"]')) {
            const svg = card.querySelector("svg");
            const text = svg ? svg.textContent : "";
            if (wanted.every((name) => text.includes(name))) return { title: card.querySelector("h3").textContent, svg: text };
          }
          return null;
        },
        opts.cycle,
        { timeout: opts.timeout, polling: 250 },
      );
      cycle = await handle.jsonValue();
    } catch (error) {
      failures.push(`no refused cycle drawn with ${opts.cycle.join(", ")}: ${error.message}`);
    }
  }

  if (opts.screenshot) {
    // Let the sparklines gather a few samples first.
    await page.waitForTimeout(4000);
    mkdirSync(dirname(opts.screenshot), { recursive: true });
    await page.screenshot({ path: opts.screenshot, fullPage: true });
  }
  if (consoleErrors.length) failures.push(`console errors: ${consoleErrors.join(" | ")}`);
  console.log(JSON.stringify({ ok: failures.length === 0, failures, locks: table.length, cycle, screenshot: opts.screenshot }));
  process.exitCode = failures.length === 0 ? 0 : 1;
} catch (error) {
  console.log(JSON.stringify({ ok: false, failures: [...failures, error.message], consoleErrors }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
