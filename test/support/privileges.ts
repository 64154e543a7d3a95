import { execFileSync } from 'node:child_process';

/**
 * Why a privileged test cannot run here, or null when it can. Under CI (CI=true) nothing privileged may skip,
 * so callers turn a reason into a failure there.
 */
export function privilegedSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root to create network namespaces';
  for (const tool of ['ip', 'nsenter', 'ping']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      return `needs ${tool} (run .ci/install-deps)`;
    }
  }
  try {
    const ns = `weftprobe${process.pid}`;
    execFileSync('ip', ['netns', 'add', ns], { stdio: 'ignore' });
    try {
      execFileSync('ip', ['-n', ns, 'link', 'add', 'vx0', 'type', 'vxlan', 'id', '1', 'dstport', '4789'], {
        stdio: 'ignore',
      });
    } finally {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    }
  } catch {
    return 'the kernel cannot create network namespaces or VXLAN devices here';
  }
  return null;
}

/** The skip option for node:test, failing loudly instead under CI. */
export function privilegedOrSkip(): { skip: string | false } {
  return skipOutsideCi(privilegedSkipReason());
}

/** A reason to skip as node:test's skip option; under CI (CI=true) nothing may skip, so a reason is an error there. */
export function skipOutsideCi(reason: string | null): { skip: string | false } {
  if (reason && process.env.CI) throw new Error(`privileged test cannot run under CI: ${reason}`);
  return { skip: reason ?? false };
}
