CREATE SCHEMA "ipam";
--> statement-breakpoint
CREATE TABLE "ipam"."allocations" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"handle" text NOT NULL,
	"address" "inet" NOT NULL,
	"pool_id" integer NOT NULL,
	"block_id" integer NOT NULL,
	"node" text NOT NULL,
	"pod_namespace" text DEFAULT '' NOT NULL,
	"pod_name" text DEFAULT '' NOT NULL,
	"container_id" text DEFAULT '' NOT NULL,
	"allocated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"released_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "ipam"."block_events" (
	"revision" bigint PRIMARY KEY NOT NULL,
	"cidr" "cidr" NOT NULL,
	"pool" text NOT NULL,
	"node" text,
	"at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "ipam"."blocks" (
	"id" serial PRIMARY KEY NOT NULL,
	"pool_id" integer NOT NULL,
	"cidr" "cidr" NOT NULL,
	"node" text NOT NULL,
	"claimed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "blocks_cidr_unique" UNIQUE("cidr")
);
--> statement-breakpoint
CREATE TABLE "ipam"."pools" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"cidr" "cidr" NOT NULL,
	"block_prefix_length" integer NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "pools_name_unique" UNIQUE("name")
);
--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD CONSTRAINT "allocations_pool_id_pools_id_fk" FOREIGN KEY ("pool_id") REFERENCES "ipam"."pools"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD CONSTRAINT "allocations_block_id_blocks_id_fk" FOREIGN KEY ("block_id") REFERENCES "ipam"."blocks"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD CONSTRAINT "blocks_pool_id_pools_id_fk" FOREIGN KEY ("pool_id") REFERENCES "ipam"."pools"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "allocations_live_address_uq" ON "ipam"."allocations" USING btree ("address") WHERE released_at IS NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "allocations_live_handle_uq" ON "ipam"."allocations" USING btree ("handle") WHERE released_at IS NULL;--> statement-breakpoint
CREATE INDEX "allocations_block_idx" ON "ipam"."allocations" USING btree ("block_id") WHERE released_at IS NULL;--> statement-breakpoint
CREATE INDEX "blocks_node_idx" ON "ipam"."blocks" USING btree ("node","pool_id");