import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { runPluginInNetns } from '../../cli/cluster/cluster.js';

/**
 * A CNI network configuration list run the way libcni (containernetworking/cni, `libcni/api.go`) runs it, with the
 * real plugin executables and nothing faked:
 *
 * - ADD runs the plugins in order. Each gets the list's `name` and `cniVersion`, `prevResult` = the previous plugin's
 *   result (none for the first), and `runtimeConfig` built from its `capabilities` (each capability it declares true
 *   that the runtime has an argument for; libcni's injectRuntimeConfig). The last result is the list's result, which
 *   the runtime caches.
 * - DEL runs them in reverse order, each with the cached result as `prevResult` from 0.4.0 on (none before).
 * - CHECK (0.4.0 on) runs them in order, each with the cached result as `prevResult`.
 *
 * Plugins run inside `netns` (the node's namespace, where a runtime would run them), found by `type` in `cniPath`.
 */
export interface PluginConfig {
  type: string;
  capabilities?: Record<string, boolean>;
  [key: string]: unknown;
}

export interface NetworkConfigList {
  cniVersion: string;
  name: string;
  plugins: PluginConfig[];
}

export interface RuntimeConf {
  containerId: string;
  /** Path of the pod's network namespace (CNI_NETNS). */
  netns: string;
  ifname: string;
  /** CNI_ARGS, e.g. "IgnoreUnknown=1;K8S_POD_NAME=web". */
  args?: string;
  /** What the runtime has for capabilities: portMappings, bandwidth, ... */
  capabilityArgs?: Record<string, unknown>;
}

export type CniResultDoc = Record<string, unknown>;

export class ChainError extends Error {
  constructor(
    readonly command: string,
    readonly plugin: string,
    readonly index: number,
    readonly exitCode: number | null,
    readonly output: string,
  ) {
    super(`${command} failed at plugin ${index} (${plugin}), exit ${exitCode}: ${output.trim()}`);
    this.name = 'ChainError';
  }
}

/** libcni's buildOneConfig: the config one plugin of the list gets on stdin. Pure. */
export function pluginNetworkConfig(
  list: NetworkConfigList,
  plugin: PluginConfig,
  prevResult: CniResultDoc | undefined,
  capabilityArgs: Record<string, unknown> = {},
): CniResultDoc {
  const conf: CniResultDoc = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (prevResult !== undefined) conf.prevResult = prevResult;
  const runtimeConfig: Record<string, unknown> = {};
  for (const [capability, supported] of Object.entries(plugin.capabilities ?? {})) {
    if (supported && capabilityArgs[capability] !== undefined) runtimeConfig[capability] = capabilityArgs[capability];
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  return conf;
}

/** Whether CNI version a is at least b (both "x.y.z"). */
export function versionAtLeast(a: string, b: string): boolean {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number));
  for (let i = 0; i < 3; i++) if ((x![i] ?? 0) !== (y![i] ?? 0)) return (x![i] ?? 0) > (y![i] ?? 0);
  return true;
}

/** libcni's FindInPath: the first executable named `type` in the CNI_PATH folders. */
export function findPlugin(type: string, cniPath: string[]): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(type))
    throw new Error(`plugin type ${JSON.stringify(type)} is not a file name`);
  for (const dir of cniPath) {
    const file = path.join(dir, type);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  throw new Error(`failed to find plugin "${type}" in path [${cniPath.join(' ')}]`);
}

export interface ChainRunner {
  add(rt: RuntimeConf): Promise<CniResultDoc>;
  check(rt: RuntimeConf, cached: CniResultDoc): Promise<void>;
  del(rt: RuntimeConf, cached?: CniResultDoc): Promise<void>;
}

export function createChainRunner(opts: { list: NetworkConfigList; netns: string; cniPath: string[] }): ChainRunner {
  const { list, netns, cniPath } = opts;
  if (list.plugins.length === 0) throw new Error(`network list ${list.name} has no plugins`);
  const files = list.plugins.map((p) => findPlugin(p.type, cniPath));

  async function exec(
    command: string,
    index: number,
    rt: RuntimeConf,
    prevResult: CniResultDoc | undefined,
  ): Promise<string> {
    const plugin = list.plugins[index]!;
    const env: Record<string, string> = {
      CNI_COMMAND: command,
      CNI_CONTAINERID: rt.containerId,
      CNI_NETNS: rt.netns,
      CNI_IFNAME: rt.ifname,
      CNI_ARGS: rt.args ?? '',
      CNI_PATH: cniPath.join(':'),
    };
    const stdin = JSON.stringify(pluginNetworkConfig(list, plugin, prevResult, rt.capabilityArgs));
    const out = await runPluginInNetns(netns, files[index]!, env, stdin);
    if (out.exitCode !== 0)
      throw new ChainError(command, plugin.type, index, out.exitCode, `${out.stdout} ${out.stderr}`);
    return out.stdout;
  }

  return {
    async add(rt) {
      let result: CniResultDoc | undefined;
      for (let i = 0; i < list.plugins.length; i++) {
        const stdout = await exec('ADD', i, rt, result);
        try {
          result = JSON.parse(stdout) as CniResultDoc;
        } catch {
          throw new ChainError('ADD', list.plugins[i]!.type, i, 0, `result is not JSON: ${stdout}`);
        }
      }
      return result!;
    },
    async check(rt, cached) {
      if (!versionAtLeast(list.cniVersion, '0.4.0'))
        throw new Error(`configuration version "${list.cniVersion}" does not support the CHECK command`);
      for (let i = 0; i < list.plugins.length; i++) await exec('CHECK', i, rt, cached);
    },
    async del(rt, cached) {
      const prev = versionAtLeast(list.cniVersion, '0.4.0') ? cached : undefined;
      for (let i = list.plugins.length - 1; i >= 0; i--) await exec('DEL', i, rt, prev);
    },
  };
}
