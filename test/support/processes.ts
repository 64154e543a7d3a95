import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The built executables, as a user runs them. */
export const bin = {
  weft: path.resolve(here, '../../bin/weft'),
  cni: path.resolve(here, '../../bin/weft-cni'),
};

export interface Started {
  child: ChildProcess;
  output: () => string;
  /** SIGTERM, then SIGKILL after graceMs; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/** Starts a program and waits until a line of its stdout matches `ready`. */
export function startUntil(
  file: string,
  args: string[],
  ready: RegExp,
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<Started & { line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const started: Started = {
      child,
      output: () => out + err,
      stop: (graceMs = 10_000) =>
        new Promise((res) => {
          if (child.exitCode !== null || child.signalCode !== null) return res(child.exitCode);
          const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
          child.once('exit', (code) => {
            clearTimeout(t);
            res(code);
          });
          child.kill('SIGTERM');
        }),
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${path.basename(file)} ${args.join(' ')} did not become ready:\n${out}\n${err.slice(-3000)}`));
    }, opts.timeoutMs ?? 60_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => ready.test(l));
      if (line) {
        clearTimeout(timer);
        resolve({ ...started, line });
      }
    });
    child.stderr!.on('data', (d) => (err += d));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${path.basename(file)} exited with ${code} before it was ready:\n${out}\n${err.slice(-3000)}`));
    });
  });
}
