ALTER TABLE "ipam"."blocks" ADD COLUMN "live_count" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "blocks_pool_idx" ON "ipam"."blocks" USING btree ("pool_id");--> statement-breakpoint
CREATE INDEX "free_addresses_since_idx" ON "ipam"."free_addresses" USING btree ("free_since");--> statement-breakpoint
UPDATE "ipam"."blocks" b SET "live_count" = (SELECT count(*) FROM "ipam"."allocations" a WHERE a."block_id" = b."id" AND a."released_at" IS NULL);
