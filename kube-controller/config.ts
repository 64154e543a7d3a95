import { loadSettings, parsers, type SettingsSpec } from '../lib/config.js';
import { parseListenAddress } from '../lib/metrics.js';
import { tlsBootstrapSettings } from '../lib/tls-bootstrap.js';
import { parseControlPlaneEndpoints } from '../lib/grpc/endpoints.js';

function absolutePathOrEmpty(raw: string): string {
  if (!raw.startsWith('/')) throw new Error('expected an absolute path');
  return raw;
}

/** https://HOST:PORT (or http:// for a local test server), nothing after the port. */
export function parseApiUrl(raw: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new Error('expected https://HOST:PORT');
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('expected https://HOST:PORT');
  if (u.pathname !== '/' || u.search || u.hash || u.username)
    throw new Error('expected https://HOST:PORT with nothing after the port');
  return `${u.protocol}//${u.host}`;
}

/** A Kubernetes object name (RFC 1123 subdomain). */
function dnsName(raw: string): string {
  if (raw.length > 253 || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(raw))
    throw new Error('expected a lower-case DNS name (a-z 0-9 - .)');
  return raw;
}

/** Settings of the Kubernetes controller (`weft kube-controller`). */
export const kubeControllerSettings = {
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
      "folder with ca.crt, tls.crt and tls.key (a Kubernetes TLS Secret plus the CA): the controller's certificate (SAN URI weft:controller:<cluster>, `weft ca issue --controller CLUSTER`) for mTLS to the control plane (required); files replaced there are used without a restart; with WEFT_BOOTSTRAP, a folder the controller fills itself",
    default: '',
    parse: parsers.string,
  },
  ...tlsBootstrapSettings,
  cluster: {
    env: 'WEFT_K8S_CLUSTER',
    description: "this Kubernetes cluster's name in Weft (registered in IPAM at start)",
    default: 'default',
    parse: dnsName,
  },
  podAggregate: {
    env: 'WEFT_K8S_POD_AGGREGATE',
    description:
      "an IPAM aggregate (weft ipam aggregate create) to carve this cluster's pod CIDR from: the leader takes a prefix of it for the cluster and makes the pool <cluster>-pods over it, selecting the cluster's nodes (label weft.io/cluster); clusters sharing a Weft never overlap. Empty: the cluster uses whatever pools select its nodes",
    default: '',
    parse: dnsName,
  },
  podPrefixLength: {
    env: 'WEFT_K8S_POD_PREFIX_LENGTH',
    description: "length of the prefix carved for the cluster's pods",
    default: 16,
    parse: parsers.int(1, 127),
  },
  podBlockPrefixLength: {
    env: 'WEFT_K8S_POD_BLOCK_PREFIX_LENGTH',
    description: "length of the blocks the cluster's pool hands to nodes",
    default: 26,
    parse: parsers.int(1, 128),
  },
  policy: {
    env: 'WEFT_K8S_POLICY',
    description:
      "feed Weft's policy service (namespaces, pods, network policies); one policy service holds one cluster's names, so with several clusters on one Weft only one may",
    default: true,
    parse: parsers.bool,
  },
  kubeconfig: {
    env: 'WEFT_KUBECONFIG',
    description: "kubeconfig file to reach the API server with; empty: the pod's service account (in-cluster)",
    default: '',
    parse: absolutePathOrEmpty,
  },
  api: {
    env: 'WEFT_K8S_API',
    description:
      'API server URL (https://HOST:PORT) used instead of the in-cluster service address, so the controller and agents reach it before kube-proxy programs the service; with a kubeconfig, replaces its server',
    default: '',
    parse: parseApiUrl,
  },
  serviceHost: {
    env: 'KUBERNETES_SERVICE_HOST',
    description: 'in-cluster API server host (set by the kubelet)',
    default: '',
    parse: parsers.string,
  },
  servicePort: {
    env: 'KUBERNETES_SERVICE_PORT',
    description: 'in-cluster API server port (set by the kubelet)',
    default: 443,
    parse: parsers.port,
  },
  serviceAccountDir: {
    env: 'WEFT_K8S_SERVICE_ACCOUNT_DIR',
    description:
      'folder of the projected service account token and ca.crt (the token is read again whenever it rotates)',
    default: '/var/run/secrets/kubernetes.io/serviceaccount',
    parse: absolutePathOrEmpty,
  },
  leaseNamespace: {
    env: 'WEFT_K8S_LEASE_NAMESPACE',
    description: 'namespace of the coordination.k8s.io Lease through which one replica leads',
    default: 'weft-system',
    parse: dnsName,
  },
  leaseName: {
    env: 'WEFT_K8S_LEASE_NAME',
    description: 'name of that Lease',
    default: 'weft-kube-controller',
    parse: dnsName,
  },
  identity: {
    env: 'POD_NAME',
    description:
      "this replica's identity in the Lease (the pod name, from the downward API); empty: host name and process id",
    default: '',
    parse: parsers.string,
  },
  leaseSeconds: {
    env: 'WEFT_K8S_LEASE_SECONDS',
    description: 'a leader that has not renewed the Lease for this long is replaced',
    default: 15,
    parse: parsers.int(2, 600),
  },
  releaseGraceSeconds: {
    env: 'WEFT_K8S_RELEASE_GRACE_SECONDS',
    description:
      "an address whose pod is gone from the API server is released this long after it was allocated and after the pod went (the runtime's own DEL normally releases it first)",
    default: 60,
    parse: parsers.int(0, 86_400),
  },
  fullSweepSeconds: {
    env: 'WEFT_K8S_FULL_SWEEP_SECONDS',
    description:
      "how often every allocation of the cluster's nodes is compared with the API server's pods (a pod deleted while no controller ran)",
    default: 600,
    parse: parsers.int(1, 86_400),
  },
  nodeStatusSeconds: {
    env: 'WEFT_K8S_NODE_STATUS_SECONDS',
    description:
      "how often the NetworkUnavailable condition of every node is brought in line with its agent's registration",
    default: 10,
    parse: parsers.int(1, 3600),
  },
  healthListen: {
    env: 'WEFT_K8S_HEALTH_LISTEN',
    description: 'host:port serving /healthz (the process runs) and /readyz (caches synced); "off": none',
    default: '0.0.0.0:7481',
    parse: (raw: string) => (raw === 'off' ? '' : (parseListenAddress(raw), raw)),
  },
  logLevel: {
    env: 'WEFT_LOG_LEVEL',
    description: 'debug, info, warn or error',
    default: 'info' as const,
    parse: parsers.oneOf('debug', 'info', 'warn', 'error'),
  },
} satisfies SettingsSpec;

export function loadKubeControllerConfig(env: Record<string, string | undefined> = process.env) {
  const c = loadSettings(kubeControllerSettings, env);
  if (!c.tlsDir)
    throw new Error(
      'WEFT_TLS_DIR is required: a folder with ca.crt, tls.crt and tls.key for this controller (weft ca issue --controller CLUSTER --out DIR), or an empty folder with WEFT_BOOTSTRAP (Kubernetes); the control plane accepts only mTLS',
    );
  if (!c.kubeconfig && !c.api && !c.serviceHost) {
    throw new Error('no API server: set WEFT_KUBECONFIG, or WEFT_K8S_API, or run in a pod (KUBERNETES_SERVICE_HOST)');
  }
  if (c.podAggregate && c.podBlockPrefixLength <= c.podPrefixLength) {
    throw new Error(
      `WEFT_K8S_POD_BLOCK_PREFIX_LENGTH (${c.podBlockPrefixLength}) must be longer than WEFT_K8S_POD_PREFIX_LENGTH (${c.podPrefixLength}): blocks are carved from the cluster's prefix`,
    );
  }
  return c;
}
export type KubeControllerConfig = ReturnType<typeof loadKubeControllerConfig>;
