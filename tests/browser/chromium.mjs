// Open one page in Chromium (Debian's /usr/bin/chromium, driven by playwright-core) and print
// every report the page makes (window.report(value)) as one JSON line, until it reports
// {"kind":"done"}. Page errors and failed console lines go to stderr.
//
// usage: node chromium.mjs URL

import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const write = (value) => process.stdout.write(JSON.stringify(value) + '\n');

let browser;
try {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // We run as root (no sandbox); no GPU; nothing fetched from the internet.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const page = await browser.newPage();
  page.on('pageerror', (error) => process.stderr.write(`page error: ${error}\n`));
  page.on('console', (line) => {
    if (line.type() === 'error') process.stderr.write(`console: ${line.text()}\n`);
  });
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  await page.exposeFunction('report', (value) => {
    write(value);
    if (value.kind === 'done') finished();
  });
  await page.goto(url);
  write({ kind: 'loaded', userAgent: await page.evaluate(() => navigator.userAgent) });
  await done;
  await browser.close();
} catch (error) {
  write({ kind: 'fatal', error: String(error && error.stack ? error.stack : error) });
  if (browser) await browser.close().catch(() => {});
  process.exitCode = 1;
}
