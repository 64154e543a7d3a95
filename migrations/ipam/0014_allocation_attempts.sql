CREATE TABLE "ipam"."allocation_attempts" (
	"handle" text NOT NULL,
	"attempt_id" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"fenced_at" timestamp with time zone,
	CONSTRAINT "allocation_attempts_handle_attempt_id_pk" PRIMARY KEY("handle","attempt_id")
);
