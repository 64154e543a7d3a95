-- Within a routing domain, aggregates never overlap and live prefixes never overlap: the database enforces it.
CREATE EXTENSION IF NOT EXISTS btree_gist;
--> statement-breakpoint
ALTER TABLE "ipam"."aggregates" ADD CONSTRAINT "aggregates_no_overlap" EXCLUDE USING gist ("routing_domain_id" WITH =, "cidr" inet_ops WITH &&);
--> statement-breakpoint
ALTER TABLE "ipam"."prefixes" ADD CONSTRAINT "prefixes_no_overlap" EXCLUDE USING gist ("routing_domain_id" WITH =, "cidr" inet_ops WITH &&) WHERE ("released_at" IS NULL);
--> statement-breakpoint
INSERT INTO "ipam"."routing_domains" ("name") VALUES ('default');
