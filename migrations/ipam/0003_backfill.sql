-- Fill the columns added in 0002 from existing rows, and keep family consistent with the addresses.
UPDATE "ipam"."pools" SET "family" = family("cidr");
--> statement-breakpoint
UPDATE "ipam"."allocations" SET "family" = family("address");
--> statement-breakpoint
UPDATE "ipam"."blocks" b SET "next_offset" = coalesce(
  (SELECT max(a."address" - host(network(b."cidr"))::inet) + 1 FROM "ipam"."allocations" a WHERE a."block_id" = b."id"), 0);
--> statement-breakpoint
INSERT INTO "ipam"."free_addresses" ("address", "block_id", "free_since")
  SELECT a."address", a."block_id", max(a."released_at") FROM "ipam"."allocations" a
  WHERE a."released_at" IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM "ipam"."allocations" l WHERE l."address" = a."address" AND l."released_at" IS NULL)
  GROUP BY a."address", a."block_id";
--> statement-breakpoint
ALTER TABLE "ipam"."pools" ADD CONSTRAINT "pools_family_matches" CHECK ("family" = family("cidr"));
--> statement-breakpoint
ALTER TABLE "ipam"."allocations" ADD CONSTRAINT "allocations_family_matches" CHECK ("family" = family("address"));
