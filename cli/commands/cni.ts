import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger } from '../../lib/logger.js';
import { installCni } from '../../node-dataplane/cni-install.js';
import { OUTPUT_FLAGS, UsageError, type CommandGroup } from '../core/command.js';

/** `weft cni install`: the DaemonSet's init step (node-dataplane/cni-install.ts). */
export const cniCommands: CommandGroup = {
  name: 'cni',
  summary: 'the CNI plugin on a host',
  commands: [
    {
      path: ['cni', 'install'],
      summary:
        'install the CNI plugin as DIR/weft, atomically, touching nothing else there (the agent writes the conflist once it answers)',
      flags: {
        'bin-dir': {
          type: 'string',
          value: 'DIR',
          required: true,
          description: "the runtime's CNI folder, e.g. /opt/cni/bin",
        },
        plugin: {
          type: 'string',
          value: 'FILE',
          description: 'the plugin to install (default: dist/bin/weft-cni-static, which needs no Node on the host)',
        },
        'conf-dir': {
          type: 'string',
          value: 'DIR',
          description: 'refused: the agent writes the conflist (WEFT_CNI_CONF_DIR)',
        },
        ...OUTPUT_FLAGS,
      },
      async run(ctx) {
        if (ctx.str('conf-dir') !== undefined) {
          throw new UsageError(
            'weft cni install installs the executable only: the agent writes the conflist once it answers (set WEFT_CNI_CONF_DIR on the agent), so no pod is sent to a plugin whose agent is not up',
          );
        }
        // dist/cli/commands/cni.js → dist/bin/weft-cni-static.
        const plugin = path.resolve(
          ctx.str('plugin') ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '../../bin/weft-cni-static'),
        );
        const logger = createLogger({ component: 'cni-install' });
        const r = await installCni(
          {
            binDir: path.resolve(ctx.str('bin-dir')!),
            confDir: '',
            pluginSource: plugin,
            name: '',
            agentSocket: '',
            bandwidth: false,
          },
          logger,
        );
        ctx.out.value(r.plugin, () => `${r.plugin?.path}: ${r.plugin?.outcome} (from ${plugin})`);
        return 0;
      },
    },
  ],
};
