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

async function refused(file: string, code: string, rule: string, why: RegExp) {
  const found = await problems(file, code);
  assert.ok(
    found.some((p) => p.startsWith(`${rule}: `) && why.test(p)),
    `${file}: expected ${rule} (${why}), got ${JSON.stringify(found)}`,
  );
}

test('domain/ modules import no database, gRPC, generated code, kernel or I/O, however the import is written', async () => {
  const file = 'services/ipam/domain/x.ts';
  const pure = /domain\/ is pure/;
  await refused(file, "import pg from 'pg';\nexport const p = pg;\n", 'import-x/no-restricted-paths', pure);
  await refused(file, 'import { Pool } from "pg";\nexport const p = Pool;\n', 'import-x/no-restricted-paths', pure);
  await refused(file, "export { sql } from 'drizzle-orm';\n", 'import-x/no-restricted-paths', pure);
  await refused(file, "import type { Server } from '@grpc/grpc-js';\nexport type S = Server;\n", 'import-x/no-restricted-paths', pure);
  await refused(file, 'export const load = () => import("../../../gen/weft/ipam/v1/ipam.js");\n', 'import-x/no-restricted-paths', pure);
  await refused(file, "export * from '../../../lib/db/database.js';\n", 'import-x/no-restricted-paths', pure);
  await refused(file, "export * from '../../../node-dataplane/kernel/links.js';\n", 'import-x/no-restricted-paths', pure);
  await refused(file, "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n", 'import-x/no-nodejs-modules', /node:fs/);
  await refused(file, "export const load = () => import('node:child_process');\n", 'import-x/no-nodejs-modules', /child_process/);
  await refused(file, 'export const port = process.env.PORT;\n', 'no-restricted-properties', /config\.ts/);
  await refused(file, "export * from '../store/schema.js';\n", 'import-x/no-restricted-paths', /own store/);
  await refused('node-dataplane/domain/x.ts', "import nl from 'netlink';\nexport const n = nl;\n", 'import-x/no-restricted-paths', pure);
});

test('the CNI plugin, the agent and the services keep out of each other', async () => {
  await refused('cni/x.ts', "export * from '../node-dataplane/config.js';\n", 'import-x/no-restricted-paths', /CNI plugin/);
  await refused('cni/x.ts', "export const load = () => import('../services/ipam/main.js');\n", 'import-x/no-restricted-paths', /CNI plugin/);
  await refused('cni/x.ts', "import { Metadata } from '@grpc/grpc-js';\nexport const m = Metadata;\n", 'import-x/no-restricted-paths', /grpc-js/);
  await refused('services/auth/store/x.ts', "export * from '../../ipam/store/schema.js';\n", 'import-x/no-restricted-paths', /over gRPC/);
  await refused('services/ipam/store/x.ts', "export * from '../../../gen/weft/ipam/v1/ipam.js';\n", 'import-x/no-restricted-paths', /stop at rpc/);
  await refused('node-dataplane/x.ts', "export * from '../services/routes/main.js';\n", 'import-x/no-restricted-paths', /never by import/);
  await refused('lib/x.ts', "export * from '../cli/main.js';\n", 'import-x/no-restricted-paths', /lib\/ is shared/);
  await refused('services/routes/x.ts', "export * from '../../test/support/privileges.js';\n", 'import-x/no-restricted-paths', /Shipped code/);
  await refused('services/ipam/domain/x.ts', "export * from './no-such-module.js';\n", 'import-x/no-unresolved', /no-such-module/);
});

test('what the boundaries allow lints clean', async () => {
  assert.deepEqual(
    await problems(
      'services/ipam/domain/x.ts',
      "import { createHash } from 'node:crypto';\nimport { parseCidr4 } from '../../../lib/net/ip.js';\nexport { createHash, parseCidr4 };\n",
    ),
    [],
  );
  // Tests beside domain code may use I/O and anything else.
  assert.deepEqual(await problems('services/ipam/domain/x.test.ts', "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n"), []);
  assert.deepEqual(await problems('cni/x.ts', "import type { AttachResponse } from '../gen/codec/weft/agent/v1/agent.js';\nexport type A = AttachResponse;\n"), []);
});
