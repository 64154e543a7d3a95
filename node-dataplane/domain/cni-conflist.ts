/**
 * The CNI network configuration list the agent installs for the node's container runtime: Weft first (an interface
 * plugin), then Debian's/upstream's reference meta plugins that read Weft's result: portmap (host ports, from the
 * runtime's `portMappings`) and, when asked, bandwidth (the runtime's `bandwidth`). 1.0.0 is the newest version that
 * the reference plugins shipped with Debian 12 (1.1.1) speak. Pure: the same options give the same bytes, so an
 * unchanged list is recognised and not rewritten.
 */
export interface ConflistOptions {
  /** The list's name: what runtimes show and key their result cache by. */
  name: string;
  /** The agent's socket, which the plugin calls. */
  agentSocket: string;
  bandwidth: boolean;
}

export const CONFLIST_CNI_VERSION = '1.0.0';
export const CONFLIST_FILE = '10-weft.conflist';
/** The plugin's file name in the runtime's CNI bin folder: a runtime runs the executable named after `type`. */
export const PLUGIN_FILE = 'weft';

export function renderConflist(opts: ConflistOptions): string {
  const plugins: Record<string, unknown>[] = [
    { type: PLUGIN_FILE, agentSocket: opts.agentSocket },
    { type: 'portmap', capabilities: { portMappings: true }, snat: true },
  ];
  if (opts.bandwidth) plugins.push({ type: 'bandwidth', capabilities: { bandwidth: true } });
  return `${JSON.stringify({ cniVersion: CONFLIST_CNI_VERSION, name: opts.name, plugins }, null, 2)}\n`;
}
