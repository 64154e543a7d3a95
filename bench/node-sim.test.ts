import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Numbering, RouteTable } from './node-sim.js';

test("a simulated node's route table holds what a map would, and tables sharing the numbering stay apart", () => {
  const names = new Numbering();
  const entries = new Numbering();
  const a = new RouteTable(names, entries);
  const b = new RouteTable(names, entries);
  const model = new Map<string, string>();
  // A fixed walk of upserts, overwrites and deletes over more names than the first allocation holds.
  for (let i = 0; i < 500; i++) {
    const name = `n${(i * 37) % 150}`;
    if (i % 7 === 3) {
      a.delete(name);
      model.delete(name);
    } else {
      const entry = `192.0.2.${i % 250}|02:5e:00:00:00:${(i % 256).toString(16)}|10.0.${i % 50}.0/26`;
      a.set(name, entry);
      model.set(name, entry);
    }
  }
  assert.equal(a.size, model.size);
  assert.deepEqual(new Map(a), model);
  for (const [k, v] of model) assert.equal(a.get(k), v);
  assert.equal(a.get('never-seen'), undefined);
  a.delete('never-seen');
  assert.equal(a.size, model.size, 'deleting an unknown name changes nothing');

  // The other table saw none of it, and holds its own value for a name the first has.
  assert.equal(b.size, 0);
  b.set('n0', 'x|y|');
  assert.equal(b.get('n0'), 'x|y|');
  assert.equal(a.get('n0'), model.get('n0'));
  assert.equal(b.get('n1'), undefined);

  a.clear();
  assert.equal(a.size, 0);
  assert.deepEqual([...a], []);
  assert.equal(b.size, 1, "clearing one table leaves the other's entries");
});
