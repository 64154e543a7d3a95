import { loadAgent } from './agent-loader.js';
import { buildResult } from './result.js';
import { runPlugin, type Verbs } from './skel.js';

/**
 * weft-cni: the CNI plugin. The runtime runs it once per ADD, DEL or VERSION; the node agent does the work.
 * The agent client (and so gRPC) is loaded only by the verbs that call the agent, through loadAgent.
 */
const verbs: Verbs = {
  async ADD({ invocation, config, signal }) {
    const agent = await loadAgent(config.agentSocket);
    const attached = await agent.attachPod(
      config.agentSocket,
      {
        containerId: invocation.containerId,
        netns: invocation.netns,
        ifname: invocation.ifname,
        podNamespace: invocation.podNamespace,
        podName: invocation.podName,
        pool: config.pool,
        requestedAddresses: [],
        mac: '',
      },
      { signal },
    );
    return buildResult(config.cniVersion, attached);
  },

  async DEL({ invocation, config, signal }) {
    const agent = await loadAgent(config.agentSocket);
    await agent.detachPod(
      config.agentSocket,
      { containerId: invocation.containerId, netns: invocation.netns, ifname: invocation.ifname },
      { signal },
    );
  },
};

void runPlugin(verbs);
