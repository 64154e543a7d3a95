import { spawn } from 'node:child_process';

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${command} failed (exit ${exitCode}): ${stderr.trim()}`);
    this.name = 'CommandError';
  }
}

/**
 * Runs a program without a shell; resolves with stdout, rejects with its stderr on a non-zero exit. `input` may be
 * a promise: the program starts at once and gets its input when the promise resolves (stdin is closed with nothing
 * written when it rejects), so a program's start-up can overlap the work that decides what it is to do.
 */
export function run(
  file: string,
  args: string[],
  opts: { input?: string | Promise<string>; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 30_000,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new CommandError(`${file} ${args.join(' ')}`, code, err)),
    );
    // A program that exits without reading its input must not crash us with EPIPE.
    child.stdin.on('error', () => {});
    if (typeof opts.input === 'object')
      opts.input.then(
        (text) => child.stdin.end(text),
        () => child.stdin.end(),
      );
    else child.stdin.end(opts.input ?? '');
  });
}
