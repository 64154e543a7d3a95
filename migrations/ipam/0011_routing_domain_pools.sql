-- Pools belong to a routing domain: they, their blocks and their live addresses are unique within a domain and may
-- overlap across domains. Existing rows join the default domain.
ALTER TABLE "ipam"."pools" ADD COLUMN "routing_domain_id" integer;--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD COLUMN "routing_domain_id" integer;--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD COLUMN "routing_domain_id" integer;--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD COLUMN "cluster" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" ADD COLUMN "routing_domain_id" integer;--> statement-breakpoint
UPDATE "ipam"."pools" SET "routing_domain_id" = (SELECT "id" FROM "ipam"."routing_domains" WHERE "name" = 'default');--> statement-breakpoint
UPDATE "ipam"."blocks" b SET "routing_domain_id" = p."routing_domain_id" FROM "ipam"."pools" p WHERE p."id" = b."pool_id";--> statement-breakpoint
UPDATE "ipam"."allocations" a SET "routing_domain_id" = b."routing_domain_id" FROM "ipam"."blocks" b WHERE b."id" = a."block_id";--> statement-breakpoint
UPDATE "ipam"."free_addresses" f SET "routing_domain_id" = b."routing_domain_id" FROM "ipam"."blocks" b WHERE b."id" = f."block_id";--> statement-breakpoint
ALTER TABLE "ipam"."pools" ALTER COLUMN "routing_domain_id" SET NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ALTER COLUMN "routing_domain_id" SET NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ALTER COLUMN "routing_domain_id" SET NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" ALTER COLUMN "routing_domain_id" SET NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD CONSTRAINT "pools_routing_domain_id_routing_domains_id_fk" FOREIGN KEY ("routing_domain_id") REFERENCES "ipam"."routing_domains"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" DROP CONSTRAINT "free_addresses_pkey";--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" ADD CONSTRAINT "free_addresses_routing_domain_id_address_pk" PRIMARY KEY("routing_domain_id","address");--> statement-breakpoint
DROP INDEX "ipam"."allocations_live_address_uq";--> statement-breakpoint
CREATE UNIQUE INDEX "allocations_live_address_uq" ON "ipam"."allocations" USING btree ("address","routing_domain_id") WHERE released_at IS NULL;--> statement-breakpoint
DROP INDEX "ipam"."blocks_live_cidr_uq";--> statement-breakpoint
CREATE UNIQUE INDEX "blocks_live_cidr_uq" ON "ipam"."blocks" USING btree ("routing_domain_id","cidr") WHERE released_at IS NULL;--> statement-breakpoint
-- The database itself refuses overlapping pools, and overlapping live blocks, within one routing domain.
ALTER TABLE "ipam"."pools" DROP CONSTRAINT "pools_no_overlap";--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD CONSTRAINT "pools_no_overlap" EXCLUDE USING gist ("routing_domain_id" WITH =, "cidr" inet_ops WITH &&);--> statement-breakpoint
ALTER TABLE "ipam"."blocks" DROP CONSTRAINT "blocks_no_overlap";--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD CONSTRAINT "blocks_no_overlap" EXCLUDE USING gist ("routing_domain_id" WITH =, "cidr" inet_ops WITH &&) WHERE ("released_at" IS NULL);
