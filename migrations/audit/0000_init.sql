CREATE SCHEMA "audit";
--> statement-breakpoint
CREATE TABLE "audit"."events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "audit"."events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"at" timestamp with time zone NOT NULL,
	"actor" text NOT NULL,
	"method" text NOT NULL,
	"resource" text DEFAULT '' NOT NULL,
	"request_id" text DEFAULT '' NOT NULL,
	"trace_id" text DEFAULT '' NOT NULL,
	"result" text NOT NULL,
	"message" text DEFAULT '' NOT NULL
);
--> statement-breakpoint
CREATE INDEX "events_at_idx" ON "audit"."events" USING btree ("at");--> statement-breakpoint
CREATE INDEX "events_actor_idx" ON "audit"."events" USING btree ("actor","id");--> statement-breakpoint
CREATE INDEX "events_resource_idx" ON "audit"."events" USING btree ("resource","id");