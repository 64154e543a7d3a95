import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../lib/atomic-file.js';
import type { Logger } from '../lib/logger.js';
import { CONFLIST_FILE, PLUGIN_FILE, renderConflist, type ConflistOptions } from './domain/cni-conflist.js';

export interface CniInstallOptions extends ConflistOptions {
  /** The runtime's CNI bin folder (e.g. /opt/cni/bin); empty: do not install the plugin. */
  binDir: string;
  /** The runtime's CNI config folder (e.g. /etc/cni/net.d); empty: do not install the conflist. */
  confDir: string;
  /** The bundled plugin to install (dist/bin/weft-cni). */
  pluginSource: string;
}

export interface CniInstallResult {
  plugin?: { path: string; outcome: 'written' | 'unchanged' };
  conflist?: { path: string; outcome: 'written' | 'unchanged' };
}

/**
 * Installs the plugin as `<binDir>/weft` (0755) and the conflist as `<confDir>/10-weft.conflist` (0644), each
 * replaced atomically (temporary file in the same folder, fsync, chmod, rename), so a runtime that runs the plugin
 * or reads the folder at any moment sees a whole file, old or new. The plugin goes first: a runtime that sees the
 * conflist must find the executable it names. Unchanged files are left alone. The folders must exist (they are the
 * runtime's; a missing one is a configuration error, named in the message).
 */
export async function installCni(opts: CniInstallOptions, logger: Logger): Promise<CniInstallResult> {
  const result: CniInstallResult = {};
  if (opts.binDir) {
    const plugin = await readFile(opts.pluginSource).catch((err: NodeJS.ErrnoException) => {
      throw new Error(
        `cannot read the CNI plugin ${opts.pluginSource} to install it: ${err.code ?? err.message} (build it with npm run build, and weft-cni-static with npm run build:cni-static)`,
      );
    });
    const target = path.join(opts.binDir, PLUGIN_FILE);
    result.plugin = { path: target, outcome: await install(target, plugin, 0o755, 'WEFT_CNI_BIN_DIR') };
  }
  if (opts.confDir) {
    const target = path.join(opts.confDir, CONFLIST_FILE);
    result.conflist = {
      path: target,
      outcome: await install(target, renderConflist(opts), 0o644, 'WEFT_CNI_CONF_DIR'),
    };
  }
  for (const [what, r] of Object.entries(result))
    logger.info(`CNI ${what} ${r.outcome === 'written' ? 'installed' : 'already installed'}`, { path: r.path });
  return result;
}

async function install(
  target: string,
  content: Buffer | string,
  mode: number,
  setting: string,
): Promise<'written' | 'unchanged'> {
  try {
    return await writeFileAtomic(target, content, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === 'ENOENT' ? `: the folder ${path.dirname(target)} does not exist; create it or fix ${setting}` : '';
    throw new Error(`cannot install ${target}: ${(err as Error).message}${hint}`, { cause: err });
  }
}
