CREATE TABLE "outbox"."deliveries" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "outbox"."deliveries_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"event_id" uuid NOT NULL,
	"event_position" bigint NOT NULL,
	"subscription" text NOT NULL,
	"status" text DEFAULT 'pending' NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"next_attempt_at" timestamp with time zone DEFAULT now() NOT NULL,
	"locked_until" timestamp with time zone,
	"locked_by" text,
	"order_key" text,
	"last_error" text,
	"last_status" integer,
	"delivered_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "deliveries_status_check" CHECK ("outbox"."deliveries"."status" in ('pending', 'delivering', 'retrying', 'delivered', 'dead'))
);
--> statement-breakpoint
CREATE TABLE "outbox"."_dispatch_state" (
	"id" integer PRIMARY KEY DEFAULT 1 NOT NULL,
	"last_id" bigint DEFAULT 0 NOT NULL,
	"snapshot_xmax" "xid8",
	"snapshot_xip" "xid8"[] DEFAULT '{}' NOT NULL,
	"dispatched_at" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "_dispatch_state_single_row_check" CHECK ("outbox"."_dispatch_state"."id" = 1)
);
--> statement-breakpoint
CREATE TABLE "outbox"."subscriptions" (
	"name" text PRIMARY KEY NOT NULL,
	"pattern" text NOT NULL,
	"kind" text NOT NULL,
	"config" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"filter" jsonpath,
	"tenant" text,
	"active" boolean DEFAULT true NOT NULL,
	"disabled_reason" text,
	"max_attempts" integer DEFAULT 25 NOT NULL,
	"ordered" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "subscriptions_name_check" CHECK ("outbox"."subscriptions"."name" ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
	CONSTRAINT "subscriptions_kind_check" CHECK ("outbox"."subscriptions"."kind" in ('webhook', 'handler', 'notify')),
	CONSTRAINT "subscriptions_max_attempts_check" CHECK ("outbox"."subscriptions"."max_attempts" between 1 and 1000)
);
--> statement-breakpoint
CREATE TABLE "outbox"."_workers" (
	"id" text PRIMARY KEY NOT NULL,
	"idle_until" timestamp with time zone,
	"heartbeat_at" timestamp with time zone DEFAULT now() NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"handlers" text[] DEFAULT '{}' NOT NULL
);
--> statement-breakpoint
ALTER TABLE "outbox"."deliveries" ADD CONSTRAINT "deliveries_subscription_subscriptions_name_fk" FOREIGN KEY ("subscription") REFERENCES "outbox"."subscriptions"("name") ON DELETE cascade ON UPDATE cascade;--> statement-breakpoint
CREATE UNIQUE INDEX "deliveries_event_position_subscription_idx" ON "outbox"."deliveries" USING btree ("event_position","subscription");--> statement-breakpoint
CREATE INDEX "deliveries_subscription_next_attempt_at_idx" ON "outbox"."deliveries" USING btree ("subscription","next_attempt_at") WHERE status in ('pending', 'retrying');--> statement-breakpoint
CREATE INDEX "deliveries_locked_until_idx" ON "outbox"."deliveries" USING btree ("locked_until") WHERE status = 'delivering';--> statement-breakpoint
CREATE INDEX "deliveries_subscription_order_key_event_position_idx" ON "outbox"."deliveries" USING btree ("subscription","order_key","event_position") WHERE order_key is not null and status in ('pending', 'retrying', 'delivering');--> statement-breakpoint
CREATE INDEX "deliveries_subscription_dead_idx" ON "outbox"."deliveries" USING btree ("subscription") WHERE status = 'dead';