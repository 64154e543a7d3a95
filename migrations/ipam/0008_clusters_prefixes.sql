CREATE TABLE "ipam"."aggregates" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"routing_domain_id" integer NOT NULL,
	"cidr" "cidr" NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "aggregates_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "ipam"."clusters" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"routing_domain_id" integer NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "clusters_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "ipam"."prefixes" (
	"id" serial PRIMARY KEY NOT NULL,
	"aggregate_id" integer NOT NULL,
	"routing_domain_id" integer NOT NULL,
	"cluster_id" integer NOT NULL,
	"purpose" text DEFAULT 'pods' NOT NULL,
	"cidr" "cidr" NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"released_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "ipam"."routing_domains" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "routing_domains_name_unique" UNIQUE("name")
);
--> statement-breakpoint
ALTER TABLE "ipam"."aggregates" ADD CONSTRAINT "aggregates_routing_domain_id_routing_domains_id_fk" FOREIGN KEY ("routing_domain_id") REFERENCES "ipam"."routing_domains"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."clusters" ADD CONSTRAINT "clusters_routing_domain_id_routing_domains_id_fk" FOREIGN KEY ("routing_domain_id") REFERENCES "ipam"."routing_domains"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."prefixes" ADD CONSTRAINT "prefixes_aggregate_id_aggregates_id_fk" FOREIGN KEY ("aggregate_id") REFERENCES "ipam"."aggregates"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."prefixes" ADD CONSTRAINT "prefixes_routing_domain_id_routing_domains_id_fk" FOREIGN KEY ("routing_domain_id") REFERENCES "ipam"."routing_domains"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ipam"."prefixes" ADD CONSTRAINT "prefixes_cluster_id_clusters_id_fk" FOREIGN KEY ("cluster_id") REFERENCES "ipam"."clusters"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "prefixes_live_purpose_uq" ON "ipam"."prefixes" USING btree ("cluster_id","aggregate_id","purpose") WHERE released_at IS NULL;--> statement-breakpoint
CREATE INDEX "prefixes_aggregate_idx" ON "ipam"."prefixes" USING btree ("aggregate_id") WHERE released_at IS NULL;