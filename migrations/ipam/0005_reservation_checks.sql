-- A reservation is one ordered range of one family.
ALTER TABLE "ipam"."reservations" ADD CONSTRAINT "reservations_ordered" CHECK ("first" <= "last" AND family("first") = family("last"));
