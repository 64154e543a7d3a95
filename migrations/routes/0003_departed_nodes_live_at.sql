CREATE TABLE "routes"."departed_nodes" (
	"name" text PRIMARY KEY NOT NULL,
	"departed_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "routes"."log_horizon" ADD COLUMN "live_at" timestamp with time zone DEFAULT now() NOT NULL;