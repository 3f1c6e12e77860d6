// Opens a page in Firefox (WebDriver BiDi through puppeteer-core, Debian's firefox-esr) and
// prints `window.__result` once the page sets it. Usage: node firefox_page.mjs <url> <firefox>
import puppeteer from "puppeteer-core";

const [url, executablePath] = process.argv.slice(2);
const browser = await puppeteer.launch({ browser: "firefox", executablePath, headless: true });
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.__result !== undefined, { timeout: 60000, polling: 100 });
  const result = await page.evaluate(() => window.__result);
  process.stdout.write(JSON.stringify(result) + "\n");
} finally {
  await browser.close();
}
