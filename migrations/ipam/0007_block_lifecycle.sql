ALTER TABLE "ipam"."blocks" DROP CONSTRAINT "blocks_cidr_unique";--> statement-breakpoint
DROP INDEX "ipam"."blocks_node_idx";--> statement-breakpoint
DROP INDEX "ipam"."blocks_pool_idx";--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD COLUMN "released_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "max_blocks_per_node" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "blocks_live_cidr_uq" ON "ipam"."blocks" USING btree ("cidr") WHERE released_at IS NULL;--> statement-breakpoint
CREATE INDEX "blocks_node_idx" ON "ipam"."blocks" USING btree ("node","pool_id") WHERE released_at IS NULL;--> statement-breakpoint
CREATE INDEX "blocks_pool_idx" ON "ipam"."blocks" USING btree ("pool_id") WHERE released_at IS NULL;--> statement-breakpoint
ALTER TABLE "ipam"."blocks" DROP CONSTRAINT "blocks_no_overlap";
--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD CONSTRAINT "blocks_no_overlap" EXCLUDE USING gist ("cidr" inet_ops WITH &&) WHERE ("released_at" IS NULL);
