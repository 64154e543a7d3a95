import type { experimental } from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';

type CertificateProvider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

export interface TlsFiles {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** How often the files are read again (10 s by default in credentials.ts). */
  refreshMs: number;
}

/**
 * The TLS files of a server or a channel, read again every `refreshMs`, as grpc-js's own file watcher does, but a
 * replacement is taken only whole: a certificate and key that do not make a TLS identity together (a renewal caught
 * between its two renames), a file missing for a moment, or a CA bundle that does not parse is not published. The
 * last good set stays in use and the files are read again within 100 ms until they agree; new connections never get a
 * mismatched pair. Listeners hear only of changes, so an unchanged file costs no new TLS context. The timer never
 * keeps a process alive, and runs only while someone listens.
 */
export function createTlsFilesProvider(files: TlsFiles): CertificateProvider & { refresh(): Promise<void> } {
  if ((files.certFile === undefined) !== (files.keyFile === undefined))
    throw new Error('certFile and keyFile go together');
  const caListeners = new Set<CaListener>();
  const identityListeners = new Set<IdentityListener>();
  let ca: Buffer | null | undefined; // undefined: not read yet; null: unreadable at first read
  let identity: { certificate: Buffer; privateKey: Buffer } | null | undefined;
  let timer: NodeJS.Timeout | null = null;
  let reading: Promise<void> | null = null;
  let retry: NodeJS.Timeout | null = null;

  const read = (file: string | undefined) =>
    file === undefined ? Promise.resolve(undefined) : readFile(file).catch(() => null);
  async function load(): Promise<void> {
    const [caPem, cert, key] = await Promise.all([read(files.caFile), read(files.certFile), read(files.keyFile)]);
    let whole = true;
    if (caPem !== undefined) {
      let good = caPem !== null;
      if (good) {
        try {
          createSecureContext({ ca: caPem! });
        } catch {
          good = false;
        }
      }
      if (good && (!ca || !ca.equals(caPem!))) {
        ca = caPem!;
        for (const l of caListeners) l({ caCertificate: ca });
      } else if (!good) {
        whole = false;
        // Unusable from the start: say so at once (connections fail) rather than leave them waiting.
        if (ca === undefined) for (const l of caListeners) l((ca = null));
      }
    }
    if (cert !== undefined) {
      let good = cert !== null && key !== null;
      if (good) {
        try {
          createSecureContext({ cert: cert!, key: key! });
        } catch {
          good = false;
        }
      }
      if (good && (!identity || !identity.certificate.equals(cert!) || !identity.privateKey.equals(key!))) {
        identity = { certificate: cert!, privateKey: key! };
        for (const l of identityListeners) l(identity);
      } else if (!good) {
        whole = false;
        if (identity === undefined) for (const l of identityListeners) l((identity = null));
      }
    }
    if (!whole && !retry && timer) {
      retry = setTimeout(() => {
        retry = null;
        void refresh();
      }, 100);
      retry.unref();
    }
  }
  function refresh(): Promise<void> {
    reading ??= load().finally(() => (reading = null));
    return reading;
  }
  function start() {
    if (timer) return;
    timer = setInterval(() => void refresh(), files.refreshMs);
    timer.unref();
    void refresh();
  }
  function stopIfIdle() {
    if (caListeners.size || identityListeners.size) return;
    if (timer) clearInterval(timer);
    if (retry) clearTimeout(retry);
    timer = retry = null;
  }
  return {
    refresh,
    addCaCertificateListener(l) {
      caListeners.add(l);
      start();
      if (ca !== undefined) process.nextTick(l, ca === null ? null : { caCertificate: ca });
    },
    removeCaCertificateListener(l) {
      caListeners.delete(l);
      stopIfIdle();
    },
    addIdentityCertificateListener(l) {
      identityListeners.add(l);
      start();
      if (identity !== undefined) process.nextTick(l, identity);
    },
    removeIdentityCertificateListener(l) {
      identityListeners.delete(l);
      stopIfIdle();
    },
  };
}
