CREATE TABLE "ipam"."reservations" (
	"id" serial PRIMARY KEY NOT NULL,
	"pool_id" integer NOT NULL,
	"first" "inet" NOT NULL,
	"last" "inet" NOT NULL,
	"reason" text DEFAULT '' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD COLUMN "owner" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" ADD COLUMN "owner" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."free_addresses" ADD COLUMN "hold_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "sticky_seconds" integer DEFAULT 600 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "disabled" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "node_selector" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "namespace_selector" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "allowed_uses" text[] DEFAULT '{workload}'::text[] NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD COLUMN "version" integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE "ipam"."reservations" ADD CONSTRAINT "reservations_pool_id_pools_id_fk" FOREIGN KEY ("pool_id") REFERENCES "ipam"."pools"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "reservations_pool_idx" ON "ipam"."reservations" USING btree ("pool_id","first");--> statement-breakpoint
CREATE INDEX "free_addresses_owner_idx" ON "ipam"."free_addresses" USING btree ("owner") WHERE owner <> '';