import { test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { commandHelp, findCommand, flagUnion, groupHelp, helpFor, parseCommandLine, topHelp } from './argv.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, UsageError, type CommandGroup, type CommandSpec } from './command.js';
import { describeFailure } from './errors.js';
import { runCommandLine } from './run.js';
import { COMMAND_GROUPS } from '../commands/index.js';

const ran: { args: readonly string[]; pool?: string; yes: boolean; scopes: string[] }[] = [];
const run: CommandSpec['run'] = async (ctx) => {
  ran.push({
    args: ctx.args,
    pool: ctx.str('pool'),
    yes: ctx.bool('yes'),
    scopes: ctx.command.flags?.scope ? ctx.list('scope') : [],
  });
  return 0;
};

const groups: CommandGroup[] = [
  {
    name: 'ipam',
    summary: 'addresses',
    commands: [
      { path: ['ipam', 'pools'], summary: 'list pools', flags: { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS }, run },
      {
        path: ['ipam', 'pool', 'create'],
        aliases: [['ipam', 'pool', 'add']],
        args: [{ name: 'NAME' }, { name: 'CIDR' }],
        summary: 'create a pool',
        flags: {
          'block-prefix-length': { type: 'string', value: 'N', required: true, description: 'block size of the pool' },
          ...CONNECTION_FLAGS,
        },
        run,
      },
      {
        path: ['ipam', 'release'],
        args: [{ name: 'HANDLE', optional: true }],
        summary: 'release addresses',
        flags: {
          pool: { type: 'string', value: 'P', description: 'only this pool' },
          yes: { type: 'boolean', description: 'really' },
        },
        run,
      },
    ],
  },
  {
    name: 'token',
    summary: 'tokens',
    help: () => 'settings: NONE',
    commands: [
      {
        path: ['token', 'create'],
        args: [{ name: 'NAME' }],
        summary: 'make one',
        flags: { scope: { type: 'string', multiple: true, value: 'S', description: 'a scope' } },
        run,
      },
    ],
  },
];

const parse = (...argv: string[]) => parseCommandLine(argv, groups);
const usageError = (re: RegExp) => (err: unknown) => err instanceof UsageError && re.test(err.message);

test('the command is the longest declared path the words start with; flags may come before, between and after', () => {
  const line = parse('--server', 'ipam', 'ipam', 'pool', '--block-prefix-length', '26', 'create', 'p1', '10.0.0.0/16');
  assert.equal(line.kind, 'run');
  if (line.kind !== 'run') return;
  assert.deepEqual(line.command.path, ['ipam', 'pool', 'create'], 'the value of --server is not a command word');
  assert.deepEqual(line.args, ['p1', '10.0.0.0/16']);
  assert.equal(line.values['block-prefix-length'], '26');
  const alias = parse('ipam', 'pool', 'add', 'p1', '10.0.0.0/16', '--block-prefix-length', '26');
  assert.equal(
    alias.kind === 'run' && alias.command.path.join(' '),
    'ipam pool create',
    'an old spelling runs the same command',
  );
  assert.equal(findCommand(groups, ['ipam', 'pools', 'x'])?.length, 2);
  assert.equal(findCommand(groups, ['ipam', 'frob']), undefined);
});

test("a flag the command does not declare is an unknown flag, named with the command's usage, even when another command declares it", () => {
  assert.throws(
    () => parse('ipam', 'pools', '--pool', 'x'),
    usageError(/^unknown flag --pool for weft ipam pools\nusage: weft ipam pools \[-o json\|yaml\|wide\]/),
  );
  assert.throws(() => parse('ipam', 'pools', '--bogus'), usageError(/unknown flag --bogus for weft ipam pools/));
  assert.throws(() => parse('ipam', 'pools', '-x'), usageError(/unknown flag -x for weft ipam pools/));
});

test('a flag without its value, or a switch given one, names the flag and the usage', () => {
  assert.throws(
    () => parse('ipam', 'release', 'h1', '--pool'),
    usageError(
      /^weft ipam release: --pool needs a value \(--pool P\)\nusage: weft ipam release \[HANDLE\] \[--pool P\] \[--yes\]$/,
    ),
  );
  assert.throws(() => parse('ipam', 'release', '--yes=1'), usageError(/--yes takes no value/));
  assert.throws(
    () => parse('ipam', 'release', '--pool', '-p'),
    usageError(/--pool's value starts with a dash: write it as --pool=VALUE/),
  );
  const dashed = parse('ipam', 'release', '--pool=-p');
  assert.equal(dashed.kind === 'run' && dashed.values.pool, '-p');
});

test('missing or extra arguments and a missing required flag are usage errors with the usage', () => {
  assert.throws(
    () => parse('ipam', 'pool', 'create', 'p1', '--block-prefix-length', '26'),
    usageError(/missing CIDR\nusage: weft ipam pool create NAME CIDR --block-prefix-length N/),
  );
  assert.throws(() => parse('ipam', 'release', 'h1', 'h2'), usageError(/unexpected "h2"/));
  assert.throws(
    () => parse('ipam', 'pool', 'create', 'p1', '10.0.0.0/16'),
    usageError(/needs --block-prefix-length N\nusage:/),
  );
  assert.throws(
    () => parse('ipam', 'frobnicate'),
    usageError(/unknown command: weft ipam frobnicate; weft ipam --help lists the commands/),
  );
  assert.throws(() => parse('frobnicate'), usageError(/unknown command: weft frobnicate; weft help lists/));
  const optional = parse('ipam', 'release', '--yes');
  assert.deepEqual(optional.kind === 'run' && optional.args, [], 'an optional argument may be left out');
});

test('help is generated from the declarations: every command, flag and description', () => {
  const help = commandHelp(groups[0]!.commands[1]!, groups);
  assert.match(help, /^usage: weft ipam pool create NAME CIDR --block-prefix-length N\n/);
  assert.match(help, /--block-prefix-length N\s+block size of the pool \(required\)/);
  assert.match(help, /common flags:[^]*--server ADDR\s+the control plane/);
  assert.match(help, /also: weft ipam pool add/);
  const top = topHelp(groups, 'EXTRA');
  for (const c of groups.flatMap((g) => g.commands))
    assert.ok(
      top.includes(`weft ${c.path.join(' ')}`) && top.includes(c.summary),
      `weft help lists ${c.path.join(' ')}`,
    );
  assert.match(top, /EXTRA\n$/);
  assert.match(groupHelp(groups, 'token'), /weft token create NAME\s+make one[^]*settings: NONE/);
  assert.match(
    commandHelp(groups[1]!.commands[0]!, groups),
    /--scope S \(repeatable\)\s+a scope[^]*settings: NONE/,
    "a group's extra text follows its commands' help",
  );
  // The same texts on the command line, with status 0 when asked for and 2 when no command was named.
  assert.deepEqual(parse('ipam', 'pool', 'create', '--help'), { kind: 'help', text: help, status: 0 });
  assert.deepEqual(parse('help', 'ipam', 'pool', 'create'), { kind: 'help', text: help, status: 0 });
  assert.deepEqual(parse('ipam', '--help'), { kind: 'help', text: groupHelp(groups, 'ipam'), status: 0 });
  assert.deepEqual(parse('ipam'), { kind: 'help', text: groupHelp(groups, 'ipam'), status: 2 });
  assert.deepEqual(parse(), { kind: 'help', text: topHelp(groups), status: 2 });
  assert.deepEqual(parse('-h'), { kind: 'help', text: topHelp(groups), status: 0 });
  assert.throws(() => helpFor(groups, ['nope']), usageError(/unknown command: weft nope/));
});

test('a repeatable flag collects every value', () => {
  const line = parse('token', 'create', 't', '--scope', 'read', '--scope', 'ipam:allocate:p');
  assert.deepEqual(line.kind === 'run' && line.values.scope, ['read', 'ipam:allocate:p']);
});

test("weft's own declarations: no flag with two shapes, a summary and descriptions everywhere, help for every command", () => {
  assert.deepEqual(flagUnion(COMMAND_GROUPS).conflicts, []);
  const paths = new Set<string>();
  for (const c of COMMAND_GROUPS.flatMap((g) => g.commands)) {
    const name = c.path.join(' ');
    assert.ok(!paths.has(name), `${name} is declared once`);
    paths.add(name);
    assert.ok(c.summary.length > 0, `${name} has a summary`);
    for (const [flag, f] of Object.entries(c.flags ?? {}))
      assert.ok(f.description.length > 0, `${name} --${flag} has a description`);
    assert.match(commandHelp(c, COMMAND_GROUPS), new RegExp(`^usage: weft ${name}`));
  }
  // Every command the old single parser knew is still there.
  for (const old of [
    'up',
    'ca issue',
    'ca init',
    'ca revoke',
    'kube-controller',
    'cni install',
    'cluster up',
    'cluster down',
    'cluster status',
    'cluster node add',
    'cluster pod add',
    'cluster pod del',
    'cluster ns add',
    'cluster agent stop',
    'cluster agent start',
    'cluster agent restart',
    'cluster control-plane restart',
    'nodes',
    'routes',
    'policy apply',
    'policy explain',
    'policy list',
    'policy pods',
    'policy delete',
    'audit',
    'token create',
    'token list',
    'token revoke',
    'ipam pools',
    'ipam pool create',
    'ipam pool update',
    'ipam allocations',
    'ipam utilization',
    'ipam show',
    'ipam history',
    'ipam reserve',
    'ipam reservations',
    'ipam unreserve',
    'ipam release',
    'ipam check',
    'ipam domains',
    'ipam clusters',
    'ipam aggregates',
    'ipam prefixes',
    'ipam domain create',
    'ipam cluster register',
    'ipam aggregate create',
    'ipam prefix allocate',
    'ipam prefix release',
  ]) {
    assert.ok(paths.has(old), `weft ${old} exists`);
  }
  assert.match(helpFor(COMMAND_GROUPS, ['up']), /settings of `weft up` \(environment\):[^]*DATABASE_URL/);
});

const capture = async (argv: string[], g: readonly CommandGroup[] = groups) => {
  let stdout = '';
  let stderr = '';
  const code = await runCommandLine(argv, g, { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t) });
  return { code, stdout, stderr };
};

test("one place maps what a command threw to its exit status: usage 2, a gRPC status 1 with the server's message", async () => {
  const failing = (err: unknown): CommandGroup[] => [
    {
      name: 'x',
      summary: 'x',
      commands: [
        {
          path: ['x'],
          summary: 'x',
          run: async () => {
            throw err;
          },
        },
      ],
    },
  ];
  assert.deepEqual(await capture(['ipam', 'pools', '--bogus']), {
    code: 2,
    stdout: '',
    stderr:
      'weft: unknown flag --bogus for weft ipam pools\nusage: weft ipam pools [-o json|yaml|wide]\n(weft ipam pools --help lists its flags)\n',
  });
  const refused = Object.assign(new Error('9 FAILED_PRECONDITION: pool p is in use'), {
    code: status.FAILED_PRECONDITION,
    details: 'pool p is in use',
  });
  assert.deepEqual(await capture(['x'], failing(refused)), { code: 1, stdout: '', stderr: 'weft: pool p is in use\n' });
  const down = Object.assign(new Error('14 UNAVAILABLE: No connection established'), {
    code: status.UNAVAILABLE,
    details: 'No connection established',
  });
  assert.deepEqual(describeFailure(down, '127.0.0.1:7400'), {
    status: 1,
    message: 'No connection established (control plane 127.0.0.1:7400: UNAVAILABLE)',
  });
  assert.deepEqual(await capture(['x'], failing(new UsageError('bad'))), {
    code: 2,
    stdout: '',
    stderr: 'weft: bad\n',
  });
  assert.deepEqual(await capture(['x'], failing('odd')), { code: 1, stdout: '', stderr: 'weft: failed: odd\n' });
  const typo: CommandGroup[] = [
    {
      name: 'y',
      summary: 'y',
      commands: [{ path: ['y'], summary: 'y', run: async (ctx) => (ctx.str('undeclared') ? 0 : 0) }],
    },
  ];
  assert.match(
    (await capture(['y'], typo)).stderr,
    /weft y reads --undeclared, which it does not declare/,
    'a handler cannot read a flag it did not declare',
  );
});

test('-o json, yaml and wide print the same rows for scripts and people; enums are names', async () => {
  const rows = [
    { name: 'a', family: 'IPv4', n: 1 },
    { name: 'bb', family: 'IPv6', n: 22 },
  ];
  const listing: CommandGroup[] = [
    {
      name: 'l',
      summary: 'l',
      commands: [
        {
          path: ['l'],
          summary: 'l',
          flags: OUTPUT_FLAGS,
          run: async (ctx) => {
            ctx.out.table(
              rows,
              [
                { header: 'NAME', value: (r) => r.name },
                { header: 'N', value: (r) => r.n },
                { header: 'FAMILY', value: (r) => r.family, wide: true },
              ],
              { empty: 'none' },
            );
            return 0;
          },
        },
      ],
    },
  ];
  assert.equal((await capture(['l'], listing)).stdout, 'NAME   N\na      1\nbb     22\n');
  assert.equal(
    (await capture(['l', '-o', 'wide'], listing)).stdout,
    'NAME   N    FAMILY\na      1    IPv4\nbb     22   IPv6\n',
  );
  assert.deepEqual(JSON.parse((await capture(['l', '--json'], listing)).stdout), rows);
  assert.deepEqual(JSON.parse((await capture(['l', '-o', 'json'], listing)).stdout), rows);
  assert.equal(
    (await capture(['l', '-o', 'yaml'], listing)).stdout,
    '- name: a\n  family: IPv4\n  n: 1\n- name: bb\n  family: IPv6\n  n: 22\n',
  );
  assert.deepEqual(await capture(['l', '-o', 'xml'], listing), {
    code: 2,
    stdout: '',
    stderr: 'weft: -o "xml": one of json, yaml, wide\n',
  });
  assert.equal((await capture(['l', '--json', '-o', 'yaml'], listing)).code, 2);
});

test('a watch prints a header once, then a row per change; JSON one object per line', async () => {
  const { Output } = await import('./output.js');
  const { familyName } = await import('./values.js');
  const { IpFamily } = await import('../../gen/weft/ipam/v1/ipam.js');
  let text = '';
  const out = new Output('table', (t) => void (text += t));
  const state = { headerShown: false };
  const columns = [
    { header: 'EVENT', value: (e: { type: string; name: string }) => e.type },
    { header: 'NAME', value: (e: { type: string; name: string }) => e.name },
  ];
  out.event({ type: 'ADDED', name: 'n1' }, columns, {}, state);
  out.event({ type: 'DELETED', name: 'n1' }, columns, {}, state);
  assert.equal(text, 'EVENT          NAME\nADDED          n1\nDELETED        n1\n');
  let json = '';
  const jsonOut = new Output('json', (t) => void (json += t));
  jsonOut.event({ type: 'ADDED', name: 'n1' }, columns, { type: 'ADDED', node: 'n1' }, { headerShown: false });
  jsonOut.event({ type: 'DELETED', name: 'n1' }, columns, { type: 'DELETED', node: 'n1' }, { headerShown: false });
  assert.deepEqual(
    json
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as unknown),
    [
      { type: 'ADDED', node: 'n1' },
      { type: 'DELETED', node: 'n1' },
    ],
  );
  assert.deepEqual([IpFamily.IP_FAMILY_IPV4, IpFamily.IP_FAMILY_IPV6].map(familyName), ['IPv4', 'IPv6']);
});
