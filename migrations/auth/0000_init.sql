CREATE SCHEMA "auth";
--> statement-breakpoint
CREATE TABLE "auth"."tokens" (
	"key_id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"secret_hash" "bytea" NOT NULL,
	"scopes" text[] NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"expires_at" timestamp with time zone,
	"revoked_at" timestamp with time zone,
	"created_by" text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "tokens_live_name_idx" ON "auth"."tokens" USING btree ("name") WHERE revoked_at IS NULL;