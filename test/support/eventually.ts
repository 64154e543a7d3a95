/**
 * Polls `check` every `everyMs` until it returns a truthy value (returned), or throws once `boundMs` have passed
 * (naming `label` and the last error `check` threw, if any). Bounded in time, as every loop of a test is.
 */
export async function eventually<T>(
  label: string,
  check: () => Promise<T | undefined | false>,
  boundMs = 20_000,
  everyMs = 200,
): Promise<T> {
  const t0 = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() - t0 > boundMs)
      throw new Error(`${label}: not within ${boundMs} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
