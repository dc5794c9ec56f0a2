-- Rows changed by hand may break the rule the constraint states; put them right first.
UPDATE "outbox"."deliveries" SET "locked_by" = null, "locked_until" = null WHERE "status" <> 'delivering' AND "locked_by" IS NOT NULL;--> statement-breakpoint
UPDATE "outbox"."deliveries" SET "status" = 'retrying', "next_attempt_at" = now(), "locked_until" = null WHERE "status" = 'delivering' AND "locked_by" IS NULL;--> statement-breakpoint
ALTER TABLE "outbox"."deliveries" ADD CONSTRAINT "deliveries_locked_by_check" CHECK (("outbox"."deliveries"."status" = 'delivering') = ("outbox"."deliveries"."locked_by" is not null));
