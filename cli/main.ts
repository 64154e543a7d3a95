import { COMMAND_GROUPS } from './commands/index.js';
import { runCommandLine } from './core/run.js';

// The `weft` command: cli/commands/index.ts lists its command groups, cli/core runs them (cli/DESIGN.md).

/** `weft --help` ends with the processes' settings (environment variables), as `weft up --help` and the others do. */
const extraHelp = () =>
  COMMAND_GROUPS.map((g) => g.help?.())
    .filter(Boolean)
    .join('\n\n');

const code = await runCommandLine(process.argv.slice(2), COMMAND_GROUPS, { extraHelp });
// Exits once stdout is written out: a pipe takes a large answer (the nodes of a 5,000-node cluster) in pieces.
process.stdout.write('', () => process.exit(code));
