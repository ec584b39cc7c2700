"""PostgreSQL workspace: the schema and row helpers both halves of the backend share."""

from __future__ import annotations

import re

from microhive.workspace.rules import FILE_COLUMNS, row_to_info

__all__ = ["COLS", "DDL", "SCHEMA_NAME", "row_info"]

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.blobs (sha256 text PRIMARY KEY, data bytea NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.files (
    ws text NOT NULL, path text NOT NULL, version int NOT NULL, deleted bool NOT NULL,
    created_at double precision NOT NULL, updated_at double precision NOT NULL,
    PRIMARY KEY (ws, path));
CREATE TABLE IF NOT EXISTS {s}.versions (
    ws text NOT NULL, path text NOT NULL, version int NOT NULL, sha256 text NOT NULL,
    size bigint NOT NULL, content_type text NOT NULL, author text, trace_id text,
    created_at double precision NOT NULL, deleted bool NOT NULL, index_state text NOT NULL,
    index_error text, seq bigserial, PRIMARY KEY (ws, path, version));
CREATE INDEX IF NOT EXISTS versions_pending ON {s}.versions (seq) WHERE index_state = 'pending';
CREATE TABLE IF NOT EXISTS {s}.idempotency (
    ws text NOT NULL, key text NOT NULL, fingerprint text NOT NULL, result text NOT NULL,
    PRIMARY KEY (ws, key));
CREATE TABLE IF NOT EXISTS {s}.outbox (
    id bigserial PRIMARY KEY, event_id text UNIQUE NOT NULL, type text NOT NULL,
    ws text NOT NULL, path text NOT NULL, payload text NOT NULL, headers text NOT NULL,
    created_at double precision NOT NULL, published_at double precision);
CREATE TABLE IF NOT EXISTS {s}.chunks (
    id bigserial PRIMARY KEY, ws text NOT NULL, path text NOT NULL, version int NOT NULL,
    ordinal int NOT NULL, content_type text NOT NULL, text text NOT NULL, model text NOT NULL,
    vector real[] NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED);
CREATE INDEX IF NOT EXISTS chunks_file ON {s}.chunks (ws, path);
CREATE INDEX IF NOT EXISTS chunks_tsv ON {s}.chunks USING gin (tsv);
CREATE TABLE IF NOT EXISTS {s}.folders (
    ws text NOT NULL, path text NOT NULL, created_at double precision NOT NULL,
    PRIMARY KEY (ws, path));
CREATE TABLE IF NOT EXISTS {s}.cursors (name text PRIMARY KEY, position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.webhooks (
    id text PRIMARY KEY, url text NOT NULL, events text NOT NULL, folder text NOT NULL,
    ws text, secret text NOT NULL, old_secret text, old_secret_until double precision,
    enabled int NOT NULL DEFAULT 1, disabled_reason text, created_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.deliveries (
    id bigserial PRIMARY KEY, webhook_id text NOT NULL, event_id text NOT NULL,
    payload text NOT NULL, attempts int NOT NULL DEFAULT 0, next_at double precision NOT NULL,
    status text NOT NULL, last_status int, last_error text,
    created_at double precision NOT NULL, UNIQUE (webhook_id, event_id));
CREATE INDEX IF NOT EXISTS deliveries_due ON {s}.deliveries (next_at) WHERE status = 'pending';
"""
#: The shared column list and row mapper (the SQLite store uses the same).
COLS = FILE_COLUMNS
row_info = row_to_info
