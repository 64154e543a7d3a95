CREATE SCHEMA "routes";
--> statement-breakpoint
CREATE TABLE "routes"."nodes" (
	"name" text PRIMARY KEY NOT NULL,
	"underlay_address" "inet" NOT NULL,
	"vtep_mac" "macaddr" NOT NULL,
	"registered_at" timestamp with time zone DEFAULT now() NOT NULL,
	"revision" bigint NOT NULL
);
