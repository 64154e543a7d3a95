import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  KubeConfig,
  ListWatch,
  Watch,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { createBackoff } from '../lib/backoff.js';
import type { Logger } from '../lib/logger.js';
import type { KubeControllerConfig } from './config.js';

/**
 * The Kubernetes API client's configuration: a kubeconfig file, or the pod's service account. The service account's
 * token is read from its file again whenever it changes (the kubelet rotates projected tokens), so a long-running
 * controller never holds an expired credential. WEFT_K8S_API replaces the server either way: the API server's own
 * address, reachable before kube-proxy has programmed the `kubernetes` Service.
 */
export function kubeConfigFrom(
  c: Pick<KubeControllerConfig, 'kubeconfig' | 'api' | 'serviceHost' | 'servicePort' | 'serviceAccountDir'>,
): KubeConfig {
  const kc = new KubeConfig();
  if (c.kubeconfig) {
    kc.loadFromFile(c.kubeconfig);
    if (c.api) {
      const current = kc.getCurrentCluster();
      if (!current) throw new Error(`${c.kubeconfig} has no current cluster`);
      kc.clusters = kc.clusters.map((x) => (x.name === current.name ? { ...x, server: c.api } : x));
    }
    return kc;
  }
  const host = c.serviceHost.includes(':') ? `[${c.serviceHost}]` : c.serviceHost;
  const server = c.api || `https://${host}:${c.servicePort}`;
  const tokenFile = path.join(c.serviceAccountDir, 'token');
  const caFile = path.join(c.serviceAccountDir, 'ca.crt');
  if (!existsSync(tokenFile))
    throw new Error(`no service account token at ${tokenFile}: mount one, or set WEFT_KUBECONFIG`);
  kc.loadFromOptions({
    clusters: [{ name: 'weft', server, caFile: existsSync(caFile) ? caFile : undefined, skipTLSVerify: false }],
    users: [{ name: 'weft', authProvider: { name: 'tokenFile', config: { tokenFile } } }],
    contexts: [{ name: 'weft', cluster: 'weft', user: 'weft' }],
    currentContext: 'weft',
  });
  return kc;
}

/** The watch of one kind, kept open for the controller's life. */
export interface KindWatch<T extends KubernetesObject> {
  readonly kind: string;
  /** True once the first complete list has been taken in. */
  synced(): boolean;
  /** Resolves once synced (or the signal aborts). */
  whenSynced(): Promise<void>;
  get(name: string, namespace?: string): T | undefined;
  list(): readonly T[];
  stop(): Promise<void>;
}

/**
 * Longest a watch request is kept open. The API server is asked to end it sooner (timeoutSeconds) and to send
 * bookmarks, so the resource version held stays recent; the client-side limit ends a connection that went silent
 * (a network that drops packets without a reset), after which the watch resumes from the last version seen.
 */
const WATCH_SERVER_SECONDS = 240;
const WATCH_CLIENT_LIMIT_MS = (WATCH_SERVER_SECONDS + 30) * 1000;

/**
 * Lists and watches one kind into a cache and calls `onChange(key)` with "namespace/name" for every object added,
 * changed or deleted. After a watch breaks it resumes from the last resource version; when the API server says that
 * version expired (410 Gone) it lists again, and objects missing from the new list count as deleted, so a change
 * made while the watch was down is neither missed nor applied twice wrongly (the controller reacts to keys, reading
 * the cache's current state). A failed list or watch is retried with jittered backoff for as long as the controller
 * runs (the API server restarting, or unreachable at bootstrap).
 */
export function watchKind<T extends KubernetesObject>(opts: {
  kind: string;
  kubeConfig: KubeConfig;
  /** The API path, e.g. "/api/v1/pods". */
  path: string;
  list: () => Promise<KubernetesListObject<T>>;
  onChange: (key: string, obj: T) => void;
  logger: Logger;
}): KindWatch<T> {
  const log = opts.logger.child({ kind: opts.kind });
  const watch = new Watch(opts.kubeConfig);
  const limited = {
    async watch(
      p: string,
      query: Record<string, unknown>,
      cb: (phase: string, obj: unknown, w: unknown) => void,
      done: (err: unknown) => void,
    ) {
      let timer: NodeJS.Timeout | undefined;
      const controller = await watch.watch(
        p,
        { ...query, allowWatchBookmarks: true, timeoutSeconds: WATCH_SERVER_SECONDS },
        cb,
        (err) => {
          clearTimeout(timer);
          done(err);
        },
      );
      timer = setTimeout(() => controller.abort(), WATCH_CLIENT_LIMIT_MS);
      timer.unref();
      return controller;
    },
  };
  const informer = new ListWatch<T>(opts.path, limited as unknown as Watch, opts.list, false);
  const backoff = createBackoff({ baseMs: 500, capMs: 30_000 });
  let stopped = false;
  let isSynced = false;
  let retry: NodeJS.Timeout | undefined;
  let failedThisStart = false;
  const syncedWaiters: (() => void)[] = [];
  const changed = (obj: T) => opts.onChange(`${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`, obj);
  informer.on('add', changed);
  informer.on('update', changed);
  informer.on('delete', changed);
  const start = async () => {
    retry = undefined;
    if (stopped) return;
    failedThisStart = false;
    await informer.start();
    if (failedThisStart || stopped) return;
    backoff.reset();
    if (!isSynced) {
      isSynced = true;
      log.info('synced', { objects: informer.list().length });
      for (const w of syncedWaiters.splice(0)) w();
    }
  };
  // Each (re)connection: a full list when no resource version is held (the first start, or the API server said the
  // one held expired), else a watch resumed from it.
  informer.on('connect', () => {
    if (informer.latestResourceVersion() === '')
      log.info('listing', { after: isSynced ? 'the resource version expired' : 'start' });
    else log.debug('watch resumed', { resource_version: informer.latestResourceVersion() });
  });
  let saidNotServed = false;
  informer.on('error', (err: unknown) => {
    failedThisStart = true;
    if (stopped || retry) return;
    const e = err as { message?: string; code?: number; statusCode?: number };
    const status = e?.statusCode ?? e?.code;
    if (status === 404) {
      // The kind is not served (a CRD not installed): looked for again every minute, said once.
      if (!saidNotServed)
        log.info('not served by the API server (its CRD is not installed?); looking again every minute', {
          path: opts.path,
        });
      saidNotServed = true;
      retry = setTimeout(() => void start(), 60_000);
      return;
    }
    const delay = backoff.next();
    // The client's messages carry the whole response (headers too): the first line says what failed.
    log.warn('list or watch failed; retrying', {
      error: (e?.message ?? String(err)).split('\n').slice(0, 2).join(' '),
      status,
      retry_ms: delay,
    });
    retry = setTimeout(() => void start(), delay);
  });
  void start();
  return {
    kind: opts.kind,
    synced: () => isSynced,
    whenSynced: () => (isSynced ? Promise.resolve() : new Promise<void>((r) => syncedWaiters.push(r))),
    get: (name, namespace) => informer.get(name, namespace),
    list: () => informer.list(),
    async stop() {
      stopped = true;
      clearTimeout(retry);
      await informer.stop();
      for (const w of syncedWaiters.splice(0)) w();
    },
  };
}
