// Open pages in one Chromium (Debian's /usr/bin/chromium, driven by playwright-core) and print
// every report a page makes (window.report(value)) as one JSON line, tagged with the page's
// index, until every page has reported {"kind":"done"}. Page errors and console errors go to
// stderr.
//
// usage: node chromium.mjs [--chromium-switch ...] URL [URL...]
// (arguments starting with "--" are passed to Chromium, e.g. --ignore-certificate-errors-spki-list)

import { chromium } from 'playwright-core';

const switches = process.argv.slice(2).filter((arg) => arg.startsWith('--'));
const urls = process.argv.slice(2).filter((arg) => !arg.startsWith('--'));
const write = (value) => process.stdout.write(JSON.stringify(value) + '\n');

let browser;
try {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // We run as root (no sandbox); no GPU; nothing fetched from the internet.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      ...switches,
    ],
  });
  await Promise.all(
    urls.map(async (url, index) => {
      const page = await browser.newPage();
      page.on('pageerror', (error) => process.stderr.write(`page ${index} error: ${error}\n`));
      page.on('console', (line) => {
        if (line.type() === 'error') process.stderr.write(`page ${index}: ${line.text()}\n`);
      });
      let finished;
      const done = new Promise((resolve) => (finished = resolve));
      await page.exposeFunction('report', (value) => {
        write({ ...value, page: index });
        if (value.kind === 'done') finished();
      });
      await page.goto(url);
      await done;
      await page.close();
    }),
  );
  await browser.close();
} catch (error) {
  write({ kind: 'fatal', error: String(error && error.stack ? error.stack : error) });
  if (browser) await browser.close().catch(() => {});
  process.exitCode = 1;
}
