import {
  chooseUnderlay,
  validateUnderlayWanted,
  type UnderlayChoice,
  type UnderlayWanted,
} from '../domain/underlay-choice.js';
import { ip, listAddresses } from './links.js';

export type DetectedUnderlay = UnderlayChoice;

/** Reads the node's interfaces and routes and chooses the underlay as `domain/underlay-choice.ts` says. */
export async function detectUnderlay(want: UnderlayWanted): Promise<DetectedUnderlay> {
  validateUnderlayWanted(want);
  const links = await listAddresses();
  const routes: Parameters<typeof chooseUnderlay>[2] = {};
  if (want.routeTo) {
    routes.routeTo =
      (
        JSON.parse(await ip(['-j', 'route', 'get', want.routeTo]).catch(() => '[]')) as {
          dev?: string;
          prefsrc?: string;
        }[]
      )[0] ?? null;
  }
  routes.defaultDev = (JSON.parse(await ip(['-j', 'route', 'show', 'default'])) as { dev?: string }[])[0]?.dev ?? null;
  return chooseUnderlay(links, want, routes);
}
