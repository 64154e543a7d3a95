ALTER TABLE "ipam"."allocations" DROP CONSTRAINT "allocations_pool_id_pools_id_fk";
--> statement-breakpoint
DROP INDEX "ipam"."allocations_block_idx";--> statement-breakpoint
DROP INDEX "ipam"."blocks_node_idx";--> statement-breakpoint
CREATE INDEX "blocks_node_idx" ON "ipam"."blocks" USING btree ("node","pool_id","id") WHERE released_at IS NULL;