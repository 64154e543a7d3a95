import { loadSettings, parsers, type SettingsSpec } from '../lib/config.js';
import { tlsBootstrapSettings } from '../lib/tls-bootstrap.js';
import { parseListenAddress } from '../lib/metrics.js';
import { ROUTING_MODES } from './domain/desired.js';
import { parseControlPlaneEndpoints } from '../lib/grpc/endpoints.js';

function absolutePath(raw: string): string {
  if (!raw.startsWith('/')) throw new Error('expected an absolute path');
  return raw;
}

export type PodFamily = 'ipv4' | 'ipv6';

/** `ipv4` or `ipv4,ipv6` (any order, no repeats). IPv6-only pods are not built yet: every pod has an IPv4 address. */
export function parsePodFamilies(raw: string): PodFamily[] {
  const items = raw
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== '');
  const bad = items.filter((s) => s !== 'ipv4' && s !== 'ipv6');
  if (bad.length > 0)
    throw new Error(
      `unknown address family ${bad.map((b) => JSON.stringify(b)).join(', ')}: expected ipv4 or ipv4,ipv6`,
    );
  if (new Set(items).size !== items.length) throw new Error('a family is named twice');
  if (!items.includes('ipv4')) throw new Error('IPv6-only pods are not supported yet: expected ipv4 or ipv4,ipv6');
  return (['ipv4', 'ipv6'] as const).filter((f) => items.includes(f));
}

/** Settings of the node agent. */
export const agentSettings = {
  nodeName: { env: 'WEFT_NODE_NAME', description: "this node's name (required)", default: '', parse: parsers.string },
  controlPlane: {
    env: 'WEFT_CONTROL_PLANE',
    description:
      'gRPC address of the control plane: host:port (a DNS name that resolves to every replica counts as all of them), several replicas as ip:port,ip:port, or unix:///path; calls and watch streams stay on one replica and move to another when it goes',
    default: '127.0.0.1:7400',
    parse: parseControlPlaneEndpoints,
  },
  tlsDir: {
    env: 'WEFT_TLS_DIR',
    description:
      "folder with ca.crt, tls.crt and tls.key (a Kubernetes TLS Secret plus the CA): the node's certificate (SAN URI weft:node:<name>, `weft ca issue --node NAME`) for mTLS to the control plane (required); files replaced there are used without a restart; with WEFT_BOOTSTRAP, a folder the agent fills itself",
    default: '',
    parse: parsers.string,
  },
  tlsRefreshMs: {
    env: 'WEFT_TLS_REFRESH_MS',
    description: 'how often the files in WEFT_TLS_DIR are re-read',
    default: 10_000,
    parse: parsers.int(10, 3_600_000),
  },
  ...tlsBootstrapSettings,
  controlPlaneKeepaliveMs: {
    env: 'WEFT_CONTROL_PLANE_KEEPALIVE_MS',
    description:
      'the agent pings the control plane this often; with the timeout, how soon it notices a control plane that vanished and reconnects',
    default: 20_000,
    parse: parsers.int(1000, 3_600_000),
  },
  controlPlaneKeepaliveTimeoutMs: {
    env: 'WEFT_CONTROL_PLANE_KEEPALIVE_TIMEOUT_MS',
    description: 'a connection to the control plane whose ping is not answered within this long is given up',
    default: 10_000,
    parse: parsers.int(100, 600_000),
  },
  underlayAddress: {
    env: 'WEFT_UNDERLAY_ADDRESS',
    description: 'underlay IPv4 address (first choice: the interface holding it)',
    default: '',
    parse: parsers.string,
  },
  underlayCidr: {
    env: 'WEFT_UNDERLAY_CIDR',
    description: 'else: CIDRs, comma-separated; the first interface with a global IPv4 address inside one',
    default: '',
    parse: parsers.string,
  },
  underlayInterface: {
    env: 'WEFT_UNDERLAY_INTERFACE',
    description: 'else: interface names or patterns (eth*,ens*), tried in order',
    default: '',
    parse: parsers.string,
  },
  underlayRouteTo: {
    env: 'WEFT_UNDERLAY_ROUTE_TO',
    description:
      "else: the interface and source address of the route to this address; with none of these, the default route's interface",
    default: '',
    parse: parsers.string,
  },
  socket: {
    env: 'WEFT_AGENT_SOCKET',
    description: 'unix socket the CNI plugin calls',
    default: '/run/weft/agent.sock',
    parse: parsers.string,
  },
  vxlanDevice: {
    env: 'WEFT_VXLAN_DEVICE',
    description: "name of Weft's VXLAN device",
    default: 'weft.vxlan',
    parse: parsers.string,
  },
  vxlanVni: {
    env: 'WEFT_VXLAN_VNI',
    description: 'VXLAN network identifier',
    default: 4096,
    parse: parsers.int(1, 16777215),
  },
  vxlanPort: { env: 'WEFT_VXLAN_PORT', description: 'VXLAN UDP port', default: 4789, parse: parsers.port },
  routingMode: {
    env: 'WEFT_ROUTING_MODE',
    description:
      "how remote nodes are reached: vxlan (every node through the VXLAN device), direct (routes via nodes' underlay addresses; a node outside this node's underlay subnet is refused, not routed), auto (direct on the underlay subnet, VXLAN beyond it)",
    default: 'auto' as const,
    parse: parsers.oneOf(...ROUTING_MODES),
  },
  routeProtocol: {
    env: 'WEFT_ROUTE_PROTOCOL',
    description: "route protocol number that marks Weft's routes",
    default: 87,
    parse: parsers.int(5, 254),
  },
  resyncMs: {
    env: 'WEFT_RESYNC_MS',
    description: 'period of the full kernel re-check',
    default: 10_000,
    parse: parsers.int(100, 3_600_000),
  },
  eventDebounceMs: {
    env: 'WEFT_EVENT_DEBOUNCE_MS',
    description: 'delay between a kernel event that concerns the overlay and the repair pass (a burst shares one pass)',
    default: 20,
    parse: parsers.int(1, 1000),
  },
  metricsListen: {
    env: 'WEFT_METRICS_LISTEN',
    description: 'host:port serving Prometheus metrics at /metrics; empty: off',
    default: '',
    parse: (raw: string) => (parseListenAddress(raw), raw),
  },
  cniBinDir: {
    env: 'WEFT_CNI_BIN_DIR',
    description:
      "the container runtime's CNI bin folder (e.g. /opt/cni/bin): at start the agent installs the plugin there as `weft`; empty: off",
    default: '',
    parse: absolutePath,
  },
  cniConfDir: {
    env: 'WEFT_CNI_CONF_DIR',
    description:
      "the container runtime's CNI config folder (e.g. /etc/cni/net.d): at start the agent installs 10-weft.conflist there (weft, then portmap); empty: off",
    default: '',
    parse: absolutePath,
  },
  cniNetworkName: {
    env: 'WEFT_CNI_NETWORK_NAME',
    description: 'name of the installed network configuration list',
    default: 'weft',
    parse: (raw: string) => {
      if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(raw))
        throw new Error("expected letters, digits, _ . - (the CNI spec's network name)");
      return raw;
    },
  },
  cniBandwidth: {
    env: 'WEFT_CNI_BANDWIDTH',
    description: "add the bandwidth plugin to the installed conflist (the runtime's bandwidth annotations then apply)",
    default: false,
    parse: parsers.bool,
  },
  cniPluginSource: {
    env: 'WEFT_CNI_PLUGIN_SOURCE',
    description: 'the bundled plugin to install; empty: dist/bin/weft-cni beside the agent',
    default: '',
    parse: absolutePath,
  },
  procSysNet: {
    env: 'WEFT_PROC_SYS_NET',
    description:
      "where the agent reads and writes the host's network sysctls (ip_forward, a pod veth's proxy_arp); in a container whose /proc/sys is read-only, a hostPath mount of the host's /proc/sys/net (the agent runs in the host's network namespace, so it shows the same)",
    default: '/proc/sys/net',
    parse: absolutePath,
  },
  sysDir: {
    env: 'WEFT_SYS_DIR',
    description:
      "where the agent reads and writes the host's sysfs (class/net: a pod veth's ifalias, ifindex); in a container whose /sys is read-only, a hostPath mount of the host's whole /sys (class/net links into devices)",
    default: '/sys',
    parse: absolutePath,
  },
  podFamilies: {
    env: 'WEFT_POD_FAMILIES',
    description:
      'address families every pod gets, comma-separated: ipv4 (IPv4 only), or ipv4,ipv6 (dual-stack: one IPAM call gives both addresses or neither; needs an IPv6 pool that selects the node, and ip6tables for IPv6 network policy)',
    default: ['ipv4'] as PodFamily[],
    parse: parsePodFamilies,
  },
  logLevel: {
    env: 'WEFT_LOG_LEVEL',
    description: 'debug, info, warn or error',
    default: 'info' as const,
    parse: parsers.oneOf('debug', 'info', 'warn', 'error'),
  },
} satisfies SettingsSpec;

export function loadAgentConfig() {
  const c = loadSettings(agentSettings);
  if (!c.nodeName) throw new Error("WEFT_NODE_NAME is required: set it to this node's name");
  if (!c.tlsDir)
    throw new Error(
      'WEFT_TLS_DIR is required: a folder with ca.crt, tls.crt and tls.key for this node (weft ca issue --node NAME --out DIR), or an empty folder with WEFT_BOOTSTRAP (Kubernetes); the control plane accepts only mTLS',
    );
  if (c.vxlanDevice.length > 15) throw new Error(`WEFT_VXLAN_DEVICE ${c.vxlanDevice} is longer than 15 characters`);
  return c;
}
export type AgentConfig = ReturnType<typeof loadAgentConfig>;
