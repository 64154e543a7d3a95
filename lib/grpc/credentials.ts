import {
  credentials,
  experimental,
  ServerCredentials,
  type ChannelCredentials,
  type ChannelOptions,
} from '@grpc/grpc-js';
import { createTlsFilesProvider } from './tls-files.js';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { checkServerIdentity, createSecureContext } from 'node:tls';
import { identityFromPeerCertificate, NO_IDENTITY, type Identity } from '../auth/identity.js';

/**
 * The one place that decides how Weft's gRPC is secured.
 *
 * - `mtls`: mutual TLS from three PEM files: the CA that signs both sides, and this side's certificate and key.
 *   Servers require a client certificate signed by that CA; clients verify the server's certificate against it with
 *   the name `weft-control-plane`, whatever address they dial. The files are read again every `refreshMs` (10 s by
 *   default; tls-files.ts), so files replaced on disk (a renewed certificate) are used by new connections without a
 *   restart, and only once certificate and key agree; open connections and their streams keep going.
 * - `server-tls` (servers) and `tls` (clients): TLS that authenticates the server only. The control plane's bootstrap
 *   listener (services/bootstrap) serves it, for pods that have no certificate yet and prove themselves with a
 *   Kubernetes token inside the call; the client verifies the server against `caFile` as under mTLS and presents none.
 * - `insecure`: plaintext. Only the agent's local CNI socket uses it (a unix socket inside the node, not the network);
 *   the control plane's listeners are always mTLS but for the bootstrap listener.
 */
export type TransportSecurity =
  | { mode: 'insecure' }
  | { mode: 'mtls'; caFile: string; certFile: string; keyFile: string; refreshMs?: number }
  | { mode: 'server-tls'; certFile: string; keyFile: string; refreshMs?: number }
  | { mode: 'tls'; caFile: string };

export const insecure: TransportSecurity = Object.freeze({ mode: 'insecure' });
export const defaultSecurity: TransportSecurity = insecure;

/** The name in the control plane's certificate that every client checks. */
export const SERVER_NAME = 'weft-control-plane';
export const DEFAULT_REFRESH_MS = 10_000;

/** A client's TLS folder (ca.crt, tls.crt, tls.key: a Kubernetes TLS Secret plus the CA) as transport security. */
export function clientTlsDir(dir: string, refreshMs?: number): TransportSecurity {
  return {
    mode: 'mtls',
    caFile: path.join(dir, 'ca.crt'),
    certFile: path.join(dir, 'tls.crt'),
    keyFile: path.join(dir, 'tls.key'),
    refreshMs,
  };
}

/**
 * Reads the files once and checks they make a TLS context (certificate matches key, PEM parses): a process starts
 * with a clear error naming the file instead of a client that cannot connect. The watcher reads them again later.
 */
export async function checkSecurityFiles(security: TransportSecurity): Promise<void> {
  if (security.mode === 'server-tls')
    return checkSecurityFiles({
      mode: 'mtls',
      caFile: security.certFile,
      certFile: security.certFile,
      keyFile: security.keyFile,
    });
  if (security.mode === 'tls') {
    try {
      createSecureContext({ ca: await readFile(security.caFile) });
      return;
    } catch (err) {
      throw new Error(
        `cannot use the CA certificate ${security.caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        { cause: err },
      );
    }
  }
  if (security.mode !== 'mtls') return;
  const read = async (file: string, what: string) => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new Error(
        `cannot read the ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        { cause: err },
      );
    }
  };
  const [ca, cert, key] = [
    await read(security.caFile, 'CA certificate'),
    await read(security.certFile, 'certificate'),
    await read(security.keyFile, 'private key'),
  ];
  try {
    createSecureContext({ ca, cert, key });
  } catch (err) {
    throw new Error(
      `the TLS files ${security.certFile}, ${security.keyFile} and ${security.caFile} do not make a TLS identity: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

type Mtls = Extract<TransportSecurity, { mode: 'mtls' }>;
const keyOf = (s: Mtls) => `${s.caFile}\0${s.certFile}\0${s.keyFile}\0${s.refreshMs ?? DEFAULT_REFRESH_MS}`;

// One provider per set of files, shared by every server and channel of the process that uses them (one timer each,
// unref'd, running only while something listens).
const providers = new Map<string, ReturnType<typeof createTlsFilesProvider>>();
function providerOf(s: Mtls): ReturnType<typeof createTlsFilesProvider> {
  const key = keyOf(s);
  let p = providers.get(key);
  if (!p) {
    p = createTlsFilesProvider({
      caFile: s.caFile,
      certFile: s.certFile,
      keyFile: s.keyFile,
      refreshMs: s.refreshMs ?? DEFAULT_REFRESH_MS,
    });
    providers.set(key, p);
  }
  return p;
}

// Server-only TLS: the server's certificate and key, watched like mTLS's, no CA (no client certificate is asked for).
const serverTlsProviders = new Map<string, ReturnType<typeof createTlsFilesProvider>>();
function serverTlsProviderOf(
  s: Extract<TransportSecurity, { mode: 'server-tls' }>,
): ReturnType<typeof createTlsFilesProvider> {
  const key = `${s.certFile}\0${s.keyFile}\0${s.refreshMs ?? DEFAULT_REFRESH_MS}`;
  let p = serverTlsProviders.get(key);
  if (!p) {
    p = createTlsFilesProvider({
      certFile: s.certFile,
      keyFile: s.keyFile,
      refreshMs: s.refreshMs ?? DEFAULT_REFRESH_MS,
    });
    serverTlsProviders.set(key, p);
  }
  return p;
}

export function serverCredentials(security: TransportSecurity = defaultSecurity): ServerCredentials {
  if (security.mode === 'insecure') return ServerCredentials.createInsecure();
  if (security.mode === 'tls') throw new Error('tls is a client mode: a server uses server-tls or mtls');
  // No CA provider: the TLS handshake asks for no client certificate.
  if (security.mode === 'server-tls')
    return experimental.createCertificateProviderServerCredentials(serverTlsProviderOf(security), null, false);
  const p = providerOf(security);
  // Arguments: identity provider, CA provider, require a client certificate (grpc-js names the first two the other way round).
  return experimental.createCertificateProviderServerCredentials(p, p, true);
}

const channelCache = new Map<string, ChannelCredentials>();
export function channelCredentials(security: TransportSecurity = defaultSecurity): ChannelCredentials {
  if (security.mode === 'insecure') return credentials.createInsecure();
  if (security.mode === 'server-tls') throw new Error('server-tls is a server mode: a client uses tls or mtls');
  // Read at each call (a bootstrap client makes one channel per attempt): a CA bundle replaced on disk is used next time.
  if (security.mode === 'tls')
    return credentials.createSsl(readFileSync(security.caFile), null, null, {
      checkServerIdentity: (_host, cert) => checkServerIdentity(SERVER_NAME, cert),
    });
  const key = keyOf(security);
  let c = channelCache.get(key);
  if (!c) {
    const p = providerOf(security);
    c = experimental.createCertificateProviderChannelCredentials(p, p, {
      checkServerIdentity: (_host, cert) => checkServerIdentity(SERVER_NAME, cert),
    });
    channelCache.set(key, c);
  }
  return c;
}

/** Channel options that go with the credentials: the TLS server name (SNI) is weft-control-plane under mTLS. */
export function channelOptions(security: TransportSecurity = defaultSecurity): ChannelOptions {
  return security.mode === 'mtls' || security.mode === 'tls' ? { 'grpc.ssl_target_name_override': SERVER_NAME } : {};
}

/** The identity of a call's verified client certificate; `none` on an insecure listener or without a certificate. */
export function peerIdentity(call: {
  getAuthContext?: () => { sslPeerCertificate?: { subjectaltname?: string } } | null;
}): Identity {
  const cert = call.getAuthContext?.()?.sslPeerCertificate;
  return cert ? identityFromPeerCertificate(cert) : NO_IDENTITY;
}
