import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';

export interface ReadWatch {
  /** Stops the reader; how many whole reads it made and how many were none of the allowed contents. */
  stop(): Promise<{ reads: number; torn: number; firstTorn: string }>;
}

/**
 * Reads `file` over and over in another process (so reads really run alongside the writer) and counts every read whose
 * bytes are none of `allowed` (by SHA-256): a partial or mixed file. Resolves once the reader runs.
 */
export async function watchReads(file: string, allowed: (Buffer | string)[]): Promise<ReadWatch> {
  const hashes = allowed.map((c) => createHash('sha256').update(c).digest('hex'));
  const reader = spawn(
    process.execPath,
    [
      '-e',
      `
    const fs = require('fs'), crypto = require('crypto');
    const file = ${JSON.stringify(file)}, allowed = new Set(${JSON.stringify(hashes)});
    let reads = 0, torn = 0, firstTorn = '';
    const check = () => {
      let d;
      try { d = fs.readFileSync(file); } catch (e) { torn++; firstTorn ||= e.code; return; }
      reads++;
      if (!allowed.has(crypto.createHash('sha256').update(d).digest('hex'))) { torn++; firstTorn ||= 'a read of ' + d.length + ' bytes'; }
    };
    process.stdin.on('data', () => { console.log(JSON.stringify({ reads, torn, firstTorn })); process.exit(0); });
    const loop = () => { for (let i = 0; i < 10; i++) check(); setImmediate(loop); };
    console.log('ready');
    loop();
  `,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  let out = '';
  reader.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  for (let i = 0; i < 200 && !out.includes('ready') && reader.exitCode === null; i++)
    await new Promise((r) => setTimeout(r, 50));
  if (!out.includes('ready')) {
    reader.kill('SIGKILL');
    throw new Error(`the reader of ${file} did not start`);
  }
  return {
    async stop() {
      const exited = new Promise((r) => reader.once('exit', r));
      const killer = setTimeout(() => reader.kill('SIGKILL'), 10_000);
      reader.stdin.write('stop\n');
      await exited;
      clearTimeout(killer);
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (!line) throw new Error(`the reader of ${file} reported nothing: ${out}`);
      return JSON.parse(line) as { reads: number; torn: number; firstTorn: string };
    },
  };
}
