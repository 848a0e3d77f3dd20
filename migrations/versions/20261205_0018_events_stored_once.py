"""Each full event stored once: `events.detail` goes, the journal's `doc` keeps only what the
folds read.

A full event was held three times: the journal's `body` (the evidence, as received), the
journal's `doc` (all of it parsed, for rebuilds and histories) and `events.detail` (parsed
again, for `/events`, the feed and push). Now `/events`, the feed and push read the journal's
body, and `doc` keeps `type`, `created_at` and the values of the object fields the folds read
of an event of its type, as a JSON array (`journal_doc`, which service/store/tables.py defines
too: a test checks the two agree). A transfer's and an orchestration's events are found by `events.object_id` (the full event's
`object.id`, for their events only), which replaces the indexes over `detail`.

Both tables are rewritten under an exclusive lock, once each (writers wait meanwhile: see the
README's "Deploying" for the time per million events). Downgrading fills `detail` back from
the journal.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration must keep meaning what it meant when it ran.
_FUNCTION = r"""
CREATE FUNCTION journal_doc(body json) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    d jsonb := CAST(replace(CAST(body AS text), '\u0000', '\ufffd') AS jsonb);
    t text := d ->> 'type';
    o jsonb := d -> 'object';
    doc jsonb := jsonb_build_array(d -> 'type', d -> 'created_at');
    layout text[] := '{}';
    names text[] := '{}';
    name text;
BEGIN
    IF jsonb_typeof(o) = 'object' THEN
        IF starts_with(t, 'identity.') THEN
            layout := ARRAY['identity_id', 'new_summary_status', 'required_documents',
                            'last_kyc_refresh_date', 'next_kyc_refresh_date',
                            'control_id', 'control_type', 'set_by', 'is_overridable',
                            'reason_code'];
        END IF;
        IF starts_with(t, 'transfer.') THEN
            layout := ARRAY['id', 'type', 'status', 'profile_id', 'ref_id',
                            'crypto_network', 'crypto_tx_hash', 'crypto_tx_index',
                            'memo'];
        END IF;
        IF starts_with(t, 'orchestration.') THEN
            layout := ARRAY['id', 'status', 'ref_id', 'orchestration_rule_id'];
        END IF;
        IF starts_with(t, 'identity.') THEN
            names := names || ARRAY['identity_id', 'new_summary_status'];
        END IF;
        IF t = 'identity.documents_required' THEN
            names := names || ARRAY['required_documents'];
        END IF;
        IF starts_with(t, 'identity.kyc_refresh.') THEN
            names := names || ARRAY['last_kyc_refresh_date', 'next_kyc_refresh_date'];
        END IF;
        IF t = 'identity.control.created' THEN
            names := names || ARRAY['control_id', 'control_type', 'set_by', 'is_overridable',
                                    'reason_code'];
        END IF;
        IF t = 'identity.control.deleted' THEN
            names := names || ARRAY['control_id', 'control_type', 'set_by', 'is_overridable',
                                    'reason_code'];
        END IF;
        IF starts_with(t, 'transfer.') THEN
            names := names || ARRAY['id', 'type', 'status', 'profile_id', 'ref_id',
                                    'crypto_network', 'crypto_tx_hash', 'crypto_tx_index',
                                    'memo'];
        END IF;
        IF starts_with(t, 'orchestration.') THEN
            names := names || ARRAY['id', 'status', 'ref_id', 'orchestration_rule_id'];
        END IF;
        FOREACH name IN ARRAY layout LOOP
            doc := doc || jsonb_build_array(CASE WHEN name = ANY (names) THEN o -> name END);
        END LOOP;
        WHILE jsonb_array_length(doc) > 2 AND doc -> -1 = 'null' LOOP
            doc := doc - (-1);
        END LOOP;
    END IF;
    RETURN doc;
END
$$
"""
_DOC = "CASE WHEN kind = 'event' THEN journal_doc(body) END"
_INDEXES = {
    "ix_events_transfer_object_id_time_event_id": "transfer.",
    "ix_events_orchestration_object_id_time_event_id": "orchestration.",
}
_AS_JSONB = r"CAST(replace(CAST({} AS text), '\u0000', '\ufffd') AS jsonb)"


def upgrade() -> None:
    op.execute(_FUNCTION)
    # Adding a stored generated column rewrites the table, and the rewrite drops the old
    # column's values.
    op.execute("ALTER TABLE journal DROP COLUMN doc")
    op.execute(f"ALTER TABLE journal ADD COLUMN doc jsonb GENERATED ALWAYS AS ({_DOC}) STORED")
    # One rewrite: the new column filled from `detail`, which goes in the same statement (its
    # indexes with it).
    op.execute("ALTER TABLE events ADD COLUMN object_id text")
    op.execute(
        "ALTER TABLE events ALTER COLUMN object_id TYPE text USING ("
        "CASE WHEN (starts_with(type, 'transfer.') OR starts_with(type, 'orchestration.')) "
        "AND jsonb_typeof(detail -> 'object' -> 'id') = 'string' "
        "THEN detail -> 'object' ->> 'id' END), DROP COLUMN detail"
    )
    for name, prefix in _INDEXES.items():
        op.execute(
            f"CREATE INDEX {name} ON events (object_id, time, event_id) "
            f"WHERE starts_with(type, '{prefix}')"
        )


def downgrade() -> None:
    op.execute("ALTER TABLE events ADD COLUMN detail jsonb")
    op.execute(
        "UPDATE events e SET detail = "
        + _AS_JSONB.format("j.body")
        + " FROM journal j WHERE j.event_id = e.event_id AND j.kind = 'event'"
    )
    for name in _INDEXES:
        op.execute(f"DROP INDEX {name}")
    op.execute("ALTER TABLE events DROP COLUMN object_id")
    for name, prefix in _INDEXES.items():
        op.execute(
            f"CREATE INDEX {name} ON events ((detail -> 'object' ->> 'id'), time, event_id) "
            f"WHERE starts_with(type, '{prefix}')"
        )
    op.execute("ALTER TABLE journal DROP COLUMN doc")
    op.execute(
        "ALTER TABLE journal ADD COLUMN doc jsonb GENERATED ALWAYS AS (CASE WHEN kind = 'event' "
        "THEN " + _AS_JSONB.format("body") + " END) STORED"
    )
    op.execute("DROP FUNCTION journal_doc(json)")
