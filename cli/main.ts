import { COMMAND_GROUPS } from './commands/index.js';
import { runCommandLine } from './core/run.js';

/** The `weft` command: cli/commands/index.ts lists its command groups, cli/core runs them (cli/DESIGN.md). */
const EXTRA_HELP = 'weft up --help and weft kube-controller --help list their settings (environment variables).';

const code = await runCommandLine(process.argv.slice(2), COMMAND_GROUPS, { extraHelp: () => EXTRA_HELP });
// Exits once stdout is written out: a pipe takes a large answer (the nodes of a 5,000-node cluster) in pieces.
process.stdout.write('', () => process.exit(code));
