CREATE TABLE "ipam"."free_addresses" (
	"address" "inet" PRIMARY KEY NOT NULL,
	"block_id" integer NOT NULL,
	"free_since" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
DROP INDEX "ipam"."allocations_live_handle_uq";--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD COLUMN "family" smallint DEFAULT 4 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD COLUMN "next_offset" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "family" smallint DEFAULT 4 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "cooldown_seconds" integer DEFAULT 30 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" ADD CONSTRAINT "free_addresses_block_id_blocks_id_fk" FOREIGN KEY ("block_id") REFERENCES "ipam"."blocks"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "free_addresses_block_idx" ON "ipam"."free_addresses" USING btree ("block_id","free_since");--> statement-breakpoint
CREATE UNIQUE INDEX "allocations_live_handle_family_uq" ON "ipam"."allocations" USING btree ("handle","family") WHERE released_at IS NULL;--> statement-breakpoint
CREATE INDEX "allocations_address_time_idx" ON "ipam"."allocations" USING btree ("address","allocated_at");--> statement-breakpoint
CREATE INDEX "allocations_pod_idx" ON "ipam"."allocations" USING btree ("pod_namespace","pod_name","allocated_at");--> statement-breakpoint
CREATE INDEX "allocations_node_time_idx" ON "ipam"."allocations" USING btree ("node","allocated_at");--> statement-breakpoint
CREATE INDEX "allocations_handle_idx" ON "ipam"."allocations" USING btree ("handle","allocated_at");