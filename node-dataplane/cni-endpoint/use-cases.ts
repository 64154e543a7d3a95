import { createAttach } from './attach.js';
import { createCheck } from './check.js';
import { createDetach } from './detach.js';
import { createGarbageCollect } from './garbage-collect.js';
import { createInProgress } from './in-progress.js';
import { createStatus } from './status.js';
import { createShared, type CniUseCaseDeps } from './use-case-deps.js';

export type { CniUseCaseDeps } from './use-case-deps.js';

/** The endpoint's use cases over one set of ports, sharing what each needs to know of the calls running now. */
export function createCniUseCases(deps: CniUseCaseDeps) {
  const shared = createShared(deps, createInProgress(deps.ipam));
  return {
    attach: createAttach(shared),
    detach: createDetach(shared),
    check: createCheck(shared),
    status: createStatus(shared),
    garbageCollect: createGarbageCollect(shared),
  };
}

export type CniUseCases = ReturnType<typeof createCniUseCases>;
