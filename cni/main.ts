import { existsSync } from 'node:fs';
import { loadAgent } from './agent-loader.js';
import { readAttachOptions, readDns, readValidAttachments } from './config.js';
import { CniCode, CniError } from './errors.js';
import { appendResult, buildResult, formatResult, parsePrevResult, type CniResult } from './result.js';
import { runPlugin, type Invocation, type Packing, type Verbs } from './skel.js';

/**
 * weft-cni: the CNI plugin. The runtime runs it once per ADD, DEL, CHECK, STATUS, GC or VERSION; the node agent does
 * the work. The agent client (and so gRPC) is loaded only by the verbs that call the agent, through loadAgent, and
 * only after everything that can be checked here has been.
 */
const verbs: Verbs = {
  async ADD({ invocation, config, signal, mark }) {
    const options = readAttachOptions(config, invocation.cniArgs);
    const dns = readDns(config);
    // In a chain, the previous plugin's result is passed on with ours appended (SPEC: handle prevResult).
    const previous =
      config.prevResult === undefined ? undefined : parsePrevResult(config.cniVersion, config.prevResult);
    assertNetnsExists(invocation);
    const agent = await loadAgent(config.agentSocket);
    mark('loaded');
    const attached = await agent.attachPod(
      config.agentSocket,
      {
        containerId: invocation.containerId,
        netns: invocation.netns,
        ifname: invocation.ifname,
        podNamespace: invocation.podNamespace,
        podName: invocation.podName,
        podUid: options.podUid,
        pool: config.pool,
        requestedAddresses: options.requestedAddresses,
        mac: options.mac,
        network: config.name,
      },
      { signal, onConnected: () => mark('connected') },
    );
    mark('answered');
    // The network config's dns goes into the result as the reference plugins report it.
    const ours = { ...buildResult(attached), dns: { ...dns } };
    return formatResult(config.cniVersion, previous ? appendResult(previous, ours) : ours);
  },

  async DEL({ invocation, config, signal, mark }) {
    // prevResult is not needed: the agent finds everything from the handle.
    const agent = await loadAgent(config.agentSocket);
    mark('loaded');
    await agent.detachPod(
      config.agentSocket,
      { containerId: invocation.containerId, netns: invocation.netns, ifname: invocation.ifname },
      { signal, onConnected: () => mark('connected') },
    );
    mark('answered');
  },

  async CHECK({ invocation, config, signal }) {
    // SPEC (CHECK): the runtime passes the attachment's cached result as prevResult; the plugin must fail without it.
    if (config.prevResult === undefined) {
      throw new CniError(
        CniCode.invalidConfig,
        'CHECK needs "prevResult" in the network config: the result of this attachment\'s ADD, which the runtime caches and passes to CHECK',
      );
    }
    const reported = reportedPodInterface(parsePrevResult(config.cniVersion, config.prevResult), invocation);
    const agent = await loadAgent(config.agentSocket);
    await agent.checkPod(
      config.agentSocket,
      {
        containerId: invocation.containerId,
        netns: invocation.netns,
        ifname: invocation.ifname,
        reportedAddresses: reported.addresses,
        reportedMac: reported.mac,
      },
      { signal },
    );
  },

  async STATUS({ config, signal }) {
    let state: { ipamReachable: boolean; detail: string };
    try {
      const agent = await loadAgent(config.agentSocket);
      state = await agent.agentStatus(config.agentSocket, { signal });
    } catch (err) {
      const e = err instanceof CniError ? err : new CniError(CniCode.internal, String(err));
      throw new CniError(
        CniCode.pluginNotAvailable,
        `weft-cni cannot add pods now: ${e.message.replace(/; try again later$/, '')}`,
        e.details,
      );
    }
    if (!state.ipamReachable)
      throw new CniError(CniCode.pluginNotAvailable, `weft-cni cannot add pods now: ${state.detail}`);
  },

  async GC({ config, signal }) {
    const valid = readValidAttachments(config);
    const agent = await loadAgent(config.agentSocket);
    const res = await agent.garbageCollect(config.agentSocket, config.name, valid, { signal });
    if (res.failures.length > 0) {
      throw new CniError(
        CniCode.tryAgainLater,
        `garbage collection left ${res.failures.length} item${res.failures.length === 1 ? '' : 's'} behind (${res.failures[0]}); try again later`,
        `released ${res.released.length} address(es) and removed ${res.removedInterfaces.length} interface(s); failures: ${res.failures.join('; ')}`,
      );
    }
  },
};

/** ADD needs the pod's namespace: a path that leads nowhere is a bad CNI_NETNS (code 4), found before any work. */
function assertNetnsExists(invocation: Invocation): void {
  if (!existsSync(invocation.netns)) {
    throw new CniError(
      CniCode.invalidEnvironment,
      `CNI_NETNS ${invocation.netns} does not exist; it must be the path of the pod's network namespace`,
    );
  }
}

/**
 * What the runtime's prevResult says ADD made for this attachment: the pod interface (CNI_IFNAME, inside a
 * sandbox, preferably CNI_NETNS) and the addresses on it. A prevResult without it is not Weft's result (code 101).
 */
function reportedPodInterface(prev: CniResult, invocation: Invocation): { addresses: string[]; mac: string } {
  const candidates = prev.interfaces
    .map((i, n) => ({ i, n }))
    .filter(({ i }) => i.name === invocation.ifname && i.sandbox);
  const pod = candidates.find(({ i }) => i.sandbox === invocation.netns) ?? candidates[0];
  if (!pod) {
    throw new CniError(
      CniCode.attachmentDiffers,
      `the runtime's prevResult lists no interface ${invocation.ifname} inside the pod's namespace, so it is not the result of this attachment's ADD`,
    );
  }
  const anyIndexed = prev.ips.some((ip) => ip.interface !== undefined);
  const addresses = prev.ips.filter((ip) => (anyIndexed ? ip.interface === pod.n : true)).map((ip) => ip.address);
  return { addresses, mac: typeof pod.i.mac === 'string' ? pod.i.mac : '' };
}

/**
 * Runs the plugin as the process (never returns). The packed executables call it with what they know of their
 * packing (scripts/bundle.mjs, scripts/sea.mjs); importing this module runs nothing.
 */
export function main(packing: Packing = {}): Promise<never> {
  return runPlugin(verbs, packing);
}
