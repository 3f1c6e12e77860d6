// Opens a page in Firefox (WebDriver BiDi through puppeteer-core, Debian's firefox-esr) and
// prints `window.__result` once the page sets it.
// Usage: node firefox_page.mjs <url> <firefox> [steps as JSON: tests/support/browser.py's Step]
import puppeteer from "puppeteer-core";

const [url, executablePath, stepsJson = "[]"] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);
const WAIT = { timeout: 60000, polling: 100 };
const browser = await puppeteer.launch({ browser: "firefox", executablePath, headless: true });
try {
  const page = await browser.newPage();
  await page.goto(url);
  const snapshots = [];
  for (const step of steps) {
    if ("wait" in step) await page.waitForFunction(step.wait, WAIT);
    else if ("offline" in step) await page.setOfflineMode(step.offline);
    else if ("run" in step) await page.evaluate(`(async () => { await (${step.run}); })()`);
    else snapshots.push(await page.evaluate(step.snapshot));
  }
  await page.waitForFunction(() => window.__result !== undefined, WAIT);
  const result = await page.evaluate(() => window.__result);
  if (steps.length) result.snapshots = snapshots;
  process.stdout.write(JSON.stringify(result) + "\n");
} finally {
  await browser.close();
}
