import { X509Certificate } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { BootstrapServiceService } from '../gen/weft/auth/v1/bootstrap.js';
import { writeFileAtomic } from './atomic-file.js';
import { createBackoff, sleep } from './backoff.js';
import { parsers } from './config.js';
import { createClient } from './grpc/client.js';
import type { Logger } from './logger.js';
import { CLIENT_TLS_FILES, createClientKey, publicKeyOfPrivateKey } from './pki.js';

/**
 * A pod's client certificate from the control plane's bootstrap listener (services/bootstrap): the agent and the
 * Kubernetes controller on Kubernetes, where no operator hands them a certificate. The process keeps one P-256 key in
 * WEFT_TLS_DIR (tls.key, made once), sends its public half with the pod's projected ServiceAccount token, and writes
 * the answer as tls.crt and ca.crt; two thirds into the certificate's life it asks again with the token as it is then
 * (the kubelet rotates it). Only tls.crt changes on a renewal, in one atomic rename, so the file watcher of
 * lib/grpc/credentials.ts never reads a certificate with another key. The bootstrap listener is verified against the
 * CA file mounted in the pod (WEFT_BOOTSTRAP_CA_FILE), never skipped.
 */

/** The settings both processes take (their config.ts spreads them in). */
export const tlsBootstrapSettings = {
  bootstrap: {
    env: 'WEFT_BOOTSTRAP',
    description:
      "host:port of the control plane's bootstrap listener: WEFT_TLS_DIR (an empty folder is fine) is then filled and renewed with a certificate got for the pod's projected ServiceAccount token; empty: WEFT_TLS_DIR must hold a certificate",
    default: '',
    parse: parsers.string,
  },
  bootstrapTokenFile: {
    env: 'WEFT_BOOTSTRAP_TOKEN_FILE',
    description:
      'the projected ServiceAccount token (audience weft) sent to the bootstrap listener, read again at every request',
    default: '/var/run/secrets/weft/token',
    parse: parsers.string,
  },
  bootstrapCaFile: {
    env: 'WEFT_BOOTSTRAP_CA_FILE',
    description: "Weft's CA certificate (a mounted ConfigMap) the bootstrap listener's certificate is verified against",
    default: '/etc/weft/ca/ca.crt',
    parse: parsers.string,
  },
};

export interface TlsBootstrapOptions {
  /** The bootstrap listener, host:port. */
  address: string;
  tokenFile: string;
  caFile: string;
  tlsDir: string;
  /** The identity this process must get ("node:node1"): another stops it with a message saying what differs. */
  expectIdentity?: string;
  logger: Logger;
  timeoutMs?: number;
}

export class TlsBootstrapError extends Error {}

/** One request: the certificate for the folder's key (made if missing) written into the folder. */
export async function requestCertificate(o: TlsBootstrapOptions): Promise<{ identity: string; notAfter: Date }> {
  await mkdir(o.tlsDir, { recursive: true, mode: 0o700 });
  const keyFile = path.join(o.tlsDir, CLIENT_TLS_FILES.key);
  let publicKeyPem: string;
  try {
    publicKeyPem = publicKeyOfPrivateKey(await readFile(keyFile, 'utf8'));
  } catch {
    const made = await createClientKey();
    await writeFileAtomic(keyFile, made.key, 0o600);
    publicKeyPem = made.publicKey;
  }
  let token: string;
  try {
    token = (await readFile(o.tokenFile, 'utf8')).trim();
  } catch (err) {
    throw new Error(
      `cannot read the ServiceAccount token ${o.tokenFile} (WEFT_BOOTSTRAP_TOKEN_FILE: a projected serviceAccountToken volume, audience weft): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { cause: err },
    );
  }
  const client = createClient(BootstrapServiceService, o.address, { security: { mode: 'tls', caFile: o.caFile } });
  try {
    const r = await client.issueCertificate(
      { serviceAccountToken: token, publicKeyPem },
      { timeoutMs: o.timeoutMs ?? 10_000 },
    );
    if (o.expectIdentity && r.identity !== o.expectIdentity) {
      throw new TlsBootstrapError(
        `the control plane issued a certificate for ${r.identity}, but this process is ${o.expectIdentity}: make the bootstrap's names agree (the agent: WEFT_NODE_NAME = the pod's spec.nodeName; the controller: WEFT_K8S_CLUSTER = the control plane's WEFT_BOOTSTRAP_CLUSTER)`,
      );
    }
    await writeFileAtomic(path.join(o.tlsDir, CLIENT_TLS_FILES.caCert), r.caCertificatePem, 0o644);
    await writeFileAtomic(path.join(o.tlsDir, CLIENT_TLS_FILES.cert), r.certificatePem, 0o644);
    return { identity: r.identity, notAfter: r.notAfter ?? new Date(new X509Certificate(r.certificatePem).validTo) };
  } finally {
    client.close();
  }
}

/** When the folder's certificate should be renewed: two thirds into its life; null when there is none (or it has no usable key). */
export async function renewalTime(tlsDir: string): Promise<Date | null> {
  try {
    const cert = new X509Certificate(await readFile(path.join(tlsDir, CLIENT_TLS_FILES.cert)));
    const key = await readFile(path.join(tlsDir, CLIENT_TLS_FILES.key), 'utf8');
    if (cert.publicKey.export({ type: 'spki', format: 'pem' }).toString() !== publicKeyOfPrivateKey(key)) return null;
    const from = Date.parse(cert.validFrom);
    const to = Date.parse(cert.validTo);
    return new Date(from + ((to - from) * 2) / 3);
  } catch {
    return null;
  }
}

export interface TlsBootstrap {
  /** Asks for a new certificate now (the renewal timer then starts from it). */
  renewNow(): Promise<void>;
  stop(): void;
}

/**
 * Makes sure the folder holds a certificate that is not due for renewal (asking until one is got, with backoff, or
 * `signal` aborts; a TlsBootstrapError, which retrying cannot fix, is thrown), then renews it in the background for
 * as long as the process runs.
 */
export async function startTlsBootstrap(o: TlsBootstrapOptions & { signal?: AbortSignal }): Promise<TlsBootstrap> {
  const log = o.logger.child({ bootstrap: o.address });
  const backoff = createBackoff({ baseMs: 500, capMs: 60_000 });
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const issueUntilDone = async () => {
    for (let attempt = 0; !stopped && !o.signal?.aborted; attempt++) {
      try {
        const got = await requestCertificate(o);
        backoff.reset();
        log.info('got a certificate', { identity: got.identity, not_after: got.notAfter.toISOString() });
        return;
      } catch (err) {
        if (err instanceof TlsBootstrapError) throw err;
        const delay = backoff.next();
        log.warn('cannot get a certificate from the bootstrap listener; retrying', {
          err: (err as Error).message,
          attempt,
          retry_ms: delay,
        });
        await sleep(delay, o.signal);
      }
    }
  };
  const schedule = async () => {
    clearTimeout(timer);
    if (stopped) return;
    const due = await renewalTime(o.tlsDir);
    const inMs = Math.max(0, Math.min((due?.getTime() ?? 0) - Date.now(), 2 ** 31 - 1));
    timer = setTimeout(() => void renew(), inMs);
    timer.unref();
  };
  const renew = async () => {
    try {
      await issueUntilDone();
    } catch (err) {
      log.error('the bootstrap listener issues another identity; keeping the current certificate', {
        err: (err as Error).message,
      });
    }
    await schedule();
  };
  o.signal?.addEventListener(
    'abort',
    () => {
      stopped = true;
      clearTimeout(timer);
    },
    { once: true },
  );
  const due = await renewalTime(o.tlsDir);
  if (!due || due.getTime() <= Date.now()) await issueUntilDone();
  else log.info('the certificate in the TLS folder is still good', { renew_at: due.toISOString() });
  await schedule();
  return {
    async renewNow() {
      clearTimeout(timer);
      await issueUntilDone();
      await schedule();
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
