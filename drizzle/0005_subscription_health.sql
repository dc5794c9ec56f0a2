CREATE TABLE "outbox"."_subscription_health" (
	"subscription" text PRIMARY KEY NOT NULL,
	"failing_since" timestamp with time zone,
	"last_success_at" timestamp with time zone,
	"last_failure_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "outbox"."_subscription_health" ADD CONSTRAINT "_subscription_health_subscription_subscriptions_name_fk" FOREIGN KEY ("subscription") REFERENCES "outbox"."subscriptions"("name") ON DELETE cascade ON UPDATE cascade;