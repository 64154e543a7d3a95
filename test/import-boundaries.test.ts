import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * The import boundaries of CONVENTIONS.md, as eslint.config.js states them, catch what they should: each case lints a
 * small source through ESLint's Node API as if it sat at the given path in the tree, and expects the rule named (or
 * none). ESLint comes from tools/lint, whose own install carries the TypeScript that typescript-eslint parses with.
 */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

interface LintMessage {
  ruleId: string | null;
  message: string;
}
interface Linter {
  lintText(code: string, options: { filePath: string }): Promise<{ messages: LintMessage[] }[]>;
}
const { ESLint } = (await import(pathToFileURL(path.join(root, 'tools/lint/index.js')).href)) as {
  ESLint: new (options: { cwd: string }) => Linter;
};
const eslint = new ESLint({ cwd: root });

async function problems(file: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: path.join(root, file) });
  return result!.messages.map((m) => `${m.ruleId}: ${m.message}`);
}

/** Each case: where the source sits, the source, the rule that must refuse it, and what its message must say. */
type Case = [file: string, code: string, rule: string, why: RegExp];

async function unrefused(cases: Case[]): Promise<string[]> {
  const misses: string[] = [];
  for (const [file, code, rule, why] of cases) {
    const found = await problems(file, code);
    if (!found.some((p) => p.startsWith(`${rule}: `) && why.test(p))) {
      misses.push(
        `${file}: ${JSON.stringify(code)} should be refused by ${rule} (${why}); got ${JSON.stringify(found)}`,
      );
    }
  }
  return misses;
}

const PATHS = 'import-x/no-restricted-paths';
const BUILTINS = 'import-x/no-nodejs-modules';
const DOMAIN = 'services/ipam/domain/x.ts';
const PURE = /domain\/ is pure/;

test('domain/ modules import no database, gRPC, generated code, kernel or I/O, however the import is written', async () => {
  const cases: Case[] = [
    [DOMAIN, "import pg from 'pg';\nexport const p = pg;\n", PATHS, PURE],
    [DOMAIN, 'import { Pool } from "pg";\nexport const p = Pool;\n', PATHS, PURE],
    [DOMAIN, "export { sql } from 'drizzle-orm';\n", PATHS, PURE],
    [DOMAIN, "import type { Server } from '@grpc/grpc-js';\nexport type S = Server;\n", PATHS, PURE],
    [DOMAIN, 'export const load = () => import("../../../gen/weft/ipam/v1/ipam.js");\n', PATHS, PURE],
    [DOMAIN, "export * from '../../../lib/db/database.js';\n", PATHS, PURE],
    [DOMAIN, "export * from '../../../node-dataplane/kernel/links.js';\n", PATHS, PURE],
    [DOMAIN, "export * from '../store/schema.js';\n", PATHS, /own store/],
    [DOMAIN, "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n", BUILTINS, /node:fs/],
    [DOMAIN, "export const load = () => import('node:child_process');\n", BUILTINS, /child_process/],
    [DOMAIN, 'export const port = process.env.PORT;\n', 'no-restricted-properties', /config\.ts/],
    ['node-dataplane/domain/x.ts', "import nl from 'netlink';\nexport const n = nl;\n", PATHS, PURE],
  ];
  assert.deepEqual(await unrefused(cases), []);
});

test('the CNI plugin, the agent, the services and lib/ keep out of each other', async () => {
  const cases: Case[] = [
    ['cni/x.ts', "export * from '../node-dataplane/config.js';\n", PATHS, /CNI plugin/],
    ['cni/x.ts', "export const load = () => import('../services/ipam/main.js');\n", PATHS, /CNI plugin/],
    ['cni/x.ts', "import { Metadata } from '@grpc/grpc-js';\nexport const m = Metadata;\n", PATHS, /grpc-js/],
    ['services/auth/store/x.ts', "export * from '../../ipam/store/schema.js';\n", PATHS, /over gRPC/],
    ['services/ipam/store/x.ts', "export * from '../../../gen/weft/ipam/v1/ipam.js';\n", PATHS, /stop at rpc/],
    ['node-dataplane/x.ts', "export * from '../services/routes/main.js';\n", PATHS, /never by import/],
    // The CNI endpoint's use cases reach IPAM and the kernel through their ports only.
    ['node-dataplane/cni-endpoint/attach.ts', "export * from '../kernel/pod-network.js';\n", PATHS, /ports/],
    [
      'node-dataplane/cni-endpoint/detach.ts',
      "import { status } from '@grpc/grpc-js';\nexport const s = status;\n",
      PATHS,
      /ports/,
    ],
    ['node-dataplane/cni-endpoint/ports.ts', "export * from '../../gen/weft/ipam/v1/ipam.js';\n", PATHS, /ports/],
    ['lib/x.ts', "export * from '../cli/main.js';\n", PATHS, /lib\/ is shared/],
    ['services/routes/x.ts', "export * from '../../test/support/privileges.js';\n", PATHS, /Shipped code/],
    // An import that does not resolve would slip past every boundary, so it is refused itself.
    [DOMAIN, "export * from './no-such-module.js';\n", 'import-x/no-unresolved', /no-such-module/],
  ];
  assert.deepEqual(await unrefused(cases), []);
});

test('what the boundaries allow lints clean', async () => {
  const pure = "import { createHash } from 'node:crypto';\nimport { parseCidr4 } from '../../../lib/net/ip.js';\n";
  assert.deepEqual(await problems(DOMAIN, `${pure}export { createHash, parseCidr4 };\n`), []);
  // Tests beside domain code may use I/O and anything else.
  const io = "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n";
  assert.deepEqual(await problems('services/ipam/domain/x.test.ts', io), []);
  const codec =
    "import type { AttachResponse } from '../gen/codec/weft/agent/v1/agent.js';\nexport type A = AttachResponse;\n";
  assert.deepEqual(await problems('cni/x.ts', codec), []);
});
