import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import puppeteer, { type Browser } from "puppeteer-core";

/**
 * Debian's Chromium, headless, for the tests of pages a person looks at
 * (scripts/install-chromium.sh installs it; CI runs that script). Without it a
 * browser test fails and says so, rather than passing without a browser.
 */

const CHROMIUM = process.env.HERALD_CHROMIUM ?? "/usr/bin/chromium";

export interface HeadlessChromium {
  browser: Browser;
  /** Closes the browser and removes its throw-away profile. */
  close(): Promise<void>;
}

export async function launchChromium(): Promise<HeadlessChromium> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `No Chromium at ${CHROMIUM}: run scripts/install-chromium.sh (or set HERALD_CHROMIUM) for the browser tests.`,
    );
  }
  const profile = await mkdtemp(path.join(os.tmpdir(), "herald-chromium-"));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      // Nothing leaves the machine but the pages under test.
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
    ],
  });
  return {
    browser,
    close: async () => {
      await browser.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}
