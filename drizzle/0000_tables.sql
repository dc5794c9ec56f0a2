CREATE SCHEMA IF NOT EXISTS "outbox";
--> statement-breakpoint
CREATE TABLE "outbox"."_captures" (
	"target" "regclass" PRIMARY KEY NOT NULL,
	"operations" text[] NOT NULL,
	"column_attnums" "int2"[],
	"exclude_attnums" "int2"[],
	"tenant_attnum" integer,
	"bypassed_statements" bigint DEFAULT 0 NOT NULL,
	"last_bypassed_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "outbox"."_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "outbox"."_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"xid" "xid8" DEFAULT pg_current_xact_id() NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"op" text NOT NULL,
	"schema_name" text,
	"table_name" text,
	"topic" text,
	"key_columns" text[],
	"emit_key" text,
	"tenant_column" text,
	"context" jsonb,
	"count" integer NOT NULL,
	"rows" json NOT NULL
);
--> statement-breakpoint
CREATE INDEX "_events_xid_idx" ON "outbox"."_events" USING btree ("xid");