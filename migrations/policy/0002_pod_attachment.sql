ALTER TABLE "policy"."pods" ADD COLUMN "described" boolean DEFAULT true NOT NULL;--> statement-breakpoint
ALTER TABLE "policy"."pods" ADD COLUMN "container_id" text DEFAULT '' NOT NULL;--> statement-breakpoint
CREATE INDEX "pods_container_idx" ON "policy"."pods" USING btree ("container_id");