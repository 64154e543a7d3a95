import { IpFamily } from '../../gen/weft/ipam/v1/ipam.js';
import { UsageError } from './command.js';

/** Flag values and printed names shared by the command modules. */

/** A duration: seconds, or a number with s, m, h or d (90s, 30m, 12h, 30d). */
export function durationSeconds(flag: string, v: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(v);
  if (!m) throw new UsageError(`${flag} ${JSON.stringify(v)} is not a duration (e.g. 3600, 90s, 30m, 12h, 30d)`);
  return Number(m[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
}

/** `--since`: a time (2026-11-27T03:12:00Z) or an age (30s, 30m, 2h, 7d) before now. */
export function sinceTime(v: string, flag = '--since'): Date {
  const age = /^(\d+)([smhd])$/.exec(v);
  if (age)
    return new Date(
      Date.now() -
        Number(age[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[age[2] as 's' | 'm' | 'h' | 'd'],
    );
  const d = new Date(v);
  if (Number.isNaN(d.getTime()))
    throw new UsageError(
      `${flag} ${JSON.stringify(v)} is neither a time (2026-11-27T03:12:00Z) nor an age (30m, 2h, 7d)`,
    );
  return d;
}

/** A point in time (`--at`, `--until`). */
export function timeFlag(flag: string, v: string | undefined): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime()))
    throw new UsageError(`--${flag} ${JSON.stringify(v)} is not a time (e.g. 2026-11-27T03:12:00Z)`);
  return d;
}

/** A whole number of seconds (`--cooldown`, `--sticky`), or undefined when not given. */
export function secondsFlag(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`--${flag} ${JSON.stringify(v)} must be a whole number of seconds`);
  return Number(v);
}

/** Follows page tokens to the end of a list. */
export async function everyPage<T>(fetch: (token: string) => Promise<{ items: T[]; next: string }>): Promise<T[]> {
  const out: T[] = [];
  let token = '';
  do {
    const page = await fetch(token);
    out.push(...page.items);
    token = page.next;
  } while (token);
  return out;
}

/** An address family by name, as Kubernetes spells it (`ipFamilies: [IPv4, IPv6]`), never the enum's number. */
export function familyName(f: IpFamily): string {
  return f === IpFamily.IP_FAMILY_IPV4 ? 'IPv4' : f === IpFamily.IP_FAMILY_IPV6 ? 'IPv6' : 'unspecified';
}

/** `value` with its `family` enum as a name, for printing. */
export function withFamilyName<T extends { family: IpFamily }>(value: T): Omit<T, 'family'> & { family: string } {
  return { ...value, family: familyName(value.family) };
}

export const iso = (d: Date | undefined | null): string => (d ? d.toISOString() : '');
