import cliProgress from "cli-progress";

/**
 * Progress for long commands, on stderr so stdout stays the result: a live bar
 * with rate and ETA on a terminal, a line every few seconds otherwise (CI, logs).
 */
export interface Progress {
  update(value: number, total: number, rows: number): void;
  stop(): void;
}

export function startProgress(label: string, unit: string): Progress {
  const started = Date.now();
  const rate = (rows: number) => Math.round(rows / Math.max((Date.now() - started) / 1000, 0.001));
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format: `${label} {bar} {percentage}% | {rows} ${unit} | {rate} ${unit}/s | ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    let begun = false;
    return {
      update(value, total, rows) {
        if (!begun) {
          bar.start(Math.max(total, 1), 0, { rows: 0, rate: 0 });
          begun = true;
        }
        bar.setTotal(Math.max(total, 1));
        bar.update(value, { rows: rows.toLocaleString("en-US"), rate: rate(rows).toLocaleString("en-US") });
      },
      stop: () => begun && bar.stop(),
    };
  }
  let lastPrinted = 0;
  return {
    update(value, total, rows) {
      if (Date.now() - lastPrinted < 5000) return;
      lastPrinted = Date.now();
      const percent = total > 0 ? Math.floor((value / total) * 100) : 0;
      process.stderr.write(
        `${label} ${percent}% | ${rows.toLocaleString("en-US")} ${unit} | ${rate(rows).toLocaleString("en-US")} ${unit}/s\n`,
      );
    },
    stop() {},
  };
}
