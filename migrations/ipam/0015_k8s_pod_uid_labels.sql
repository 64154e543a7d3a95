CREATE TABLE "ipam"."namespace_labels" (
	"cluster" text DEFAULT '' NOT NULL,
	"namespace" text NOT NULL,
	"labels" jsonb NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "namespace_labels_cluster_namespace_pk" PRIMARY KEY("cluster","namespace")
);
--> statement-breakpoint
CREATE TABLE "ipam"."node_labels" (
	"node" text PRIMARY KEY NOT NULL,
	"labels" jsonb NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD COLUMN "pod_uid" text DEFAULT '' NOT NULL;