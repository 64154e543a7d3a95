import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The lint rule of CONVENTIONS.md: domain/ is pure — no gRPC, no database, no generated protobuf types, no I/O. */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const FORBIDDEN = [/from '@grpc\//, /from 'pg'/, /from 'drizzle-orm/, /from '[./]*\/gen\//, /from 'node:(fs|child_process|net|dgram)'/, /from 'netlink'/, /process\.env/];

function domainFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const p = path.join(dir, entry);
    if (entry === 'node_modules' || entry === 'dist' || entry.startsWith('.')) continue;
    if (statSync(p).isDirectory()) out.push(...domainFiles(p));
    else if (p.includes(`${path.sep}domain${path.sep}`) && p.endsWith('.ts') && !p.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

test('domain/ modules import no transport, database, generated code or I/O', () => {
  const files = [...domainFiles(path.join(root, 'services')), ...domainFiles(path.join(root, 'node-dataplane'))];
  assert.ok(files.length >= 4, `found the domain modules (${files.length})`);
  const offences = files.flatMap((f) =>
    readFileSync(f, 'utf8').split('\n').filter((l) => FORBIDDEN.some((re) => re.test(l))).map((l) => `${path.relative(root, f)}: ${l.trim()}`));
  assert.deepEqual(offences, []);
});
