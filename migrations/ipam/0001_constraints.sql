-- The database itself refuses overlapping pools and overlapping blocks (GiST exclusion on the CIDR with inet_ops).
ALTER TABLE "ipam"."pools" ADD CONSTRAINT "pools_no_overlap" EXCLUDE USING gist ("cidr" inet_ops WITH &&);
--> statement-breakpoint
ALTER TABLE "ipam"."blocks" ADD CONSTRAINT "blocks_no_overlap" EXCLUDE USING gist ("cidr" inet_ops WITH &&);
--> statement-breakpoint
CREATE SEQUENCE "ipam"."revision_seq";
