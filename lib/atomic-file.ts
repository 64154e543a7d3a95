import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';

/**
 * Replaces a file so that a reader sees either the old content or the new, never part of either: the new content
 * goes to a temporary file in the same folder (same filesystem, so rename is atomic), which is written, fsynced,
 * given its mode and renamed over the target; then the folder is fsynced so that the rename survives a crash. A
 * file that already has this content and mode is left alone (not rewritten, its inode and mtime unchanged).
 */
export async function writeFileAtomic(
  file: string,
  content: Buffer | string,
  mode: number,
): Promise<'written' | 'unchanged'> {
  const data = typeof content === 'string' ? Buffer.from(content) : content;
  const current = await stat(file).catch(() => null);
  if (
    current?.isFile() &&
    (current.mode & 0o7777) === mode &&
    current.size === data.length &&
    (await readFile(file)).equals(data)
  )
    return 'unchanged';

  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode); // after writing, and explicitly: the umask does not decide the final mode
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await rename(temp, file);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  const folder = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
  return 'written';
}
