CREATE TABLE "auth"."certificate_revocations" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "auth"."certificate_revocations_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"serial" text NOT NULL,
	"identity" text DEFAULT '' NOT NULL,
	"not_after" timestamp with time zone,
	"revoked_at" timestamp with time zone NOT NULL,
	"reason" text DEFAULT '' NOT NULL,
	"revoked_by" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "auth"."certificates" (
	"serial" text PRIMARY KEY NOT NULL,
	"identity" text NOT NULL,
	"issued_at" timestamp with time zone NOT NULL,
	"not_after" timestamp with time zone NOT NULL,
	"issued_by" text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "certificate_revocations_serial_idx" ON "auth"."certificate_revocations" USING btree ("serial");--> statement-breakpoint
CREATE INDEX "certificates_identity_idx" ON "auth"."certificates" USING btree ("identity","issued_at");