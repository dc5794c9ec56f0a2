ALTER TABLE "outbox"."deliveries" DROP CONSTRAINT "deliveries_subscription_subscriptions_name_fk";
