/**
 * Progress for long jobs (reindex, replay, verify, export): a redrawn line on a TTY, nothing otherwise, and a final
 * summary line always. Written to stderr so stdout stays data only.
 */
export interface Progress {
  tick(done: number, detail?: string): void;
  finish(summary: string): void;
}

export function createProgress(label: string, total?: number, stream: NodeJS.WriteStream = process.stderr): Progress {
  const started = Date.now();
  let lastDraw = 0;
  const tty = stream.isTTY === true;
  return {
    tick(done, detail) {
      if (!tty) return;
      const now = Date.now();
      if (now - lastDraw < 100) return;
      lastDraw = now;
      const rate = Math.round(done / Math.max(0.001, (now - started) / 1000));
      const pct = total ? ` ${((100 * done) / total).toFixed(1)}%` : '';
      stream.write(`\r\x1b[2K${label}: ${done.toLocaleString('en-US')}${total ? `/${total.toLocaleString('en-US')}` : ''}${pct} (${rate.toLocaleString('en-US')}/s)${detail ? ` ${detail}` : ''}`);
    },
    finish(summary) {
      if (tty) stream.write('\r\x1b[2K');
      const seconds = ((Date.now() - started) / 1000).toFixed(2);
      stream.write(`${label}: ${summary} in ${seconds}s\n`);
    },
  };
}
