import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatAttachmentRecord, isOfContainer, isOfNetwork, parseAttachmentRecord } from './attachment-record.js';

describe('attachment record', () => {
  it('round-trips through the alias and matches its own network and container only', () => {
    const alias = formatAttachmentRecord({ network: 'weft', containerId: 'abc123', defaultRoute: true });
    assert.equal(alias, 'weft network=weft container=abc123 default-route=yes');
    const r = parseAttachmentRecord(alias)!;
    assert.deepEqual(r, { network: 'weft', containerId: 'abc123', defaultRoute: true });
    assert.ok(isOfNetwork(r, 'weft') && !isOfNetwork(r, 'weft-second') && !isOfNetwork(r, ''));
    assert.ok(isOfContainer(r, 'abc123') && !isOfContainer(r, 'abc1234'));
  });

  it('records long values by hash, within the kernel alias limit of 255 bytes', () => {
    const network = `n${'x'.repeat(300)}`;
    const containerId = `c${'y'.repeat(300)}`;
    const alias = formatAttachmentRecord({ network, containerId, defaultRoute: false });
    assert.ok(alias.length <= 255, alias);
    const r = parseAttachmentRecord(alias)!;
    assert.ok(isOfNetwork(r, network) && !isOfNetwork(r, `${network}z`));
    assert.ok(isOfContainer(r, containerId));
    assert.equal(r.defaultRoute, false);
  });

  it("records a second interface's routing table", () => {
    const alias = formatAttachmentRecord({ network: 'weft', containerId: 'abc', defaultRoute: false, table: 10005 });
    assert.equal(alias, 'weft network=weft container=abc default-route=no table=10005');
    assert.deepEqual(parseAttachmentRecord(alias), {
      network: 'weft',
      containerId: 'abc',
      defaultRoute: false,
      table: 10005,
    });
  });

  it('an attachment whose plugin sent no network name is recorded, and belongs to no named network', () => {
    const r = parseAttachmentRecord(formatAttachmentRecord({ network: '', containerId: 'abc', defaultRoute: true }))!;
    assert.deepEqual(r, { network: '-', containerId: 'abc', defaultRoute: true });
    assert.ok(!isOfNetwork(r, '') && !isOfNetwork(r, 'weft') && isOfContainer(r, 'abc'));
  });

  it('anything else is no record', () => {
    for (const a of ['', null, undefined, 'my veth', 'weft network=a container=b'])
      assert.equal(parseAttachmentRecord(a), null);
  });
});
