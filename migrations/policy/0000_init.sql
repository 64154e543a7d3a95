CREATE SCHEMA "policy";
--> statement-breakpoint
CREATE TABLE "policy"."namespaces" (
	"name" text PRIMARY KEY NOT NULL,
	"labels" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"revision" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "policy"."pods" (
	"namespace" text NOT NULL,
	"name" text NOT NULL,
	"labels" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"node" text DEFAULT '' NOT NULL,
	"addresses" text[] DEFAULT '{}'::text[] NOT NULL,
	"ports" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"revision" bigint NOT NULL,
	CONSTRAINT "pods_namespace_name_pk" PRIMARY KEY("namespace","name")
);
--> statement-breakpoint
CREATE TABLE "policy"."policies" (
	"kind" text NOT NULL,
	"namespace" text DEFAULT '' NOT NULL,
	"name" text NOT NULL,
	"object" jsonb NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"revision" bigint NOT NULL,
	CONSTRAINT "policies_kind_namespace_name_pk" PRIMARY KEY("kind","namespace","name")
);
--> statement-breakpoint
CREATE INDEX "pods_node_idx" ON "policy"."pods" USING btree ("node");