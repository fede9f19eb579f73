import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    // Each test file gets its own database cloned from a migrated template, so files run in parallel.
    pool: "forks",
    fileParallelism: true,
    // Vitest's default on a 2-core machine is one file at a time; most of the
    // longest files (restarts, outages, pacing) spend their time waiting.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 120_000,
    env: { LOG_LEVEL: "silent", GRAPHILE_ENV: "production" },
  },
});
