CREATE TABLE "ipam"."node_usage" (
	"pool_id" integer NOT NULL,
	"node" text NOT NULL,
	"blocks" integer DEFAULT 0 NOT NULL,
	"live" bigint DEFAULT 0 NOT NULL,
	"reserved" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "node_usage_pool_id_node_pk" PRIMARY KEY("pool_id","node")
);
--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD COLUMN "reserved" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."node_usage" ADD CONSTRAINT "node_usage_pool_id_pools_id_fk" FOREIGN KEY ("pool_id") REFERENCES "ipam"."pools"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "free_addresses_hold_idx" ON "ipam"."free_addresses" USING btree ("hold_until") WHERE hold_until IS NOT NULL;--> statement-breakpoint
-- Custom from here: backfill the counters, then keep node_usage exact with statement-level triggers on blocks. The
-- table lock keeps a running replica's allocations from slipping between the backfill and the triggers.
LOCK TABLE "ipam"."blocks" IN SHARE ROW EXCLUSIVE MODE;--> statement-breakpoint
UPDATE "ipam"."blocks" b SET "reserved" = (
  SELECT coalesce(sum((least(r."last", host(broadcast(b."cidr"))::inet) - greatest(r."first", host(network(b."cidr"))::inet)) + 1), 0)
  FROM "ipam"."reservations" r
  WHERE r."pool_id" = b."pool_id" AND r."first" <= host(broadcast(b."cidr"))::inet AND r."last" >= host(network(b."cidr"))::inet)
WHERE b."released_at" IS NULL;--> statement-breakpoint
INSERT INTO "ipam"."node_usage" ("pool_id", "node", "blocks", "live", "reserved")
  SELECT "pool_id", "node", count(*), sum("live_count"), sum("reserved") FROM "ipam"."blocks" WHERE "released_at" IS NULL GROUP BY "pool_id", "node";--> statement-breakpoint
-- One statement's changes to blocks, summed per (pool, node): a live block counts 1 block, its live_count and its
-- reserved; a statement adds what its new rows count and takes away what its old rows counted. Statements that change
-- no counter (next_offset alone) touch no usage row. Rows are written in key order, so two statements that share
-- usage rows lock them in the same order.
CREATE FUNCTION "ipam"."blocks_usage"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO ipam.node_usage AS u (pool_id, node, blocks, live, reserved)
      SELECT pool_id, node, count(*), sum(live_count), sum(reserved) FROM new_blocks WHERE released_at IS NULL GROUP BY pool_id, node ORDER BY pool_id, node
      ON CONFLICT (pool_id, node) DO UPDATE SET blocks = u.blocks + excluded.blocks, live = u.live + excluded.live, reserved = u.reserved + excluded.reserved;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO ipam.node_usage AS u (pool_id, node, blocks, live, reserved)
      SELECT pool_id, node, sum(nb), sum(nl), sum(nr) FROM (
        SELECT pool_id, node, 1 AS nb, live_count AS nl, reserved AS nr FROM new_blocks WHERE released_at IS NULL
        UNION ALL
        SELECT pool_id, node, -1, -live_count, -reserved FROM old_blocks WHERE released_at IS NULL) d
      GROUP BY pool_id, node HAVING sum(nb) <> 0 OR sum(nl) <> 0 OR sum(nr) <> 0 ORDER BY pool_id, node
      ON CONFLICT (pool_id, node) DO UPDATE SET blocks = u.blocks + excluded.blocks, live = u.live + excluded.live, reserved = u.reserved + excluded.reserved;
  ELSE
    INSERT INTO ipam.node_usage AS u (pool_id, node, blocks, live, reserved)
      SELECT pool_id, node, -count(*), -sum(live_count), -sum(reserved) FROM old_blocks WHERE released_at IS NULL GROUP BY pool_id, node ORDER BY pool_id, node
      ON CONFLICT (pool_id, node) DO UPDATE SET blocks = u.blocks + excluded.blocks, live = u.live + excluded.live, reserved = u.reserved + excluded.reserved;
  END IF;
  RETURN NULL;
END $$;--> statement-breakpoint
CREATE TRIGGER "blocks_usage_insert" AFTER INSERT ON "ipam"."blocks" REFERENCING NEW TABLE AS new_blocks FOR EACH STATEMENT EXECUTE FUNCTION "ipam"."blocks_usage"();--> statement-breakpoint
CREATE TRIGGER "blocks_usage_update" AFTER UPDATE ON "ipam"."blocks" REFERENCING OLD TABLE AS old_blocks NEW TABLE AS new_blocks FOR EACH STATEMENT EXECUTE FUNCTION "ipam"."blocks_usage"();--> statement-breakpoint
CREATE TRIGGER "blocks_usage_delete" AFTER DELETE ON "ipam"."blocks" REFERENCING OLD TABLE AS old_blocks FOR EACH STATEMENT EXECUTE FUNCTION "ipam"."blocks_usage"();
