CREATE TABLE "routes"."block_affinities" (
	"cidr" "cidr" PRIMARY KEY NOT NULL,
	"node" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "routes"."changes" (
	"revision" bigint PRIMARY KEY NOT NULL,
	"node" text NOT NULL,
	"kind" text NOT NULL,
	"routes" jsonb,
	"changed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "changes_kind_check" CHECK ("kind" IN ('upsert', 'delete') AND ("kind" = 'delete') = ("routes" IS NULL))
);
--> statement-breakpoint
CREATE TABLE "routes"."log_horizon" (
	"id" integer PRIMARY KEY NOT NULL,
	"compacted_through" bigint NOT NULL,
	"affinities_synced_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "routes"."route_table" (
	"node" text PRIMARY KEY NOT NULL,
	"routes" jsonb NOT NULL,
	"revision" bigint NOT NULL
);
--> statement-breakpoint
ALTER TABLE "routes"."nodes" ADD COLUMN "lease_expires_at" timestamp with time zone DEFAULT now() NOT NULL;--> statement-breakpoint
CREATE INDEX "block_affinities_node_idx" ON "routes"."block_affinities" USING btree ("node");--> statement-breakpoint
-- Every change of the route table takes the next revision from this sequence, with routes.changes' advisory lock held
-- from before nextval until commit, so revisions commit in order (see services/routes/DESIGN.md).
CREATE SEQUENCE "routes"."change_seq";--> statement-breakpoint
INSERT INTO "routes"."log_horizon" ("id", "compacted_through") VALUES (1, 0);--> statement-breakpoint
-- Nodes registered before leases existed keep an hour to renew (their agents re-register on upgrade).
UPDATE "routes"."nodes" SET "lease_expires_at" = now() + interval '1 hour';
