"""The growth benchmark's pure parts: the export trailer read from its line's head, the
windows it measures, and the load statement for either schema."""

from __future__ import annotations

import json

from bench import export, growth


def test_trailer_counts_are_read_from_a_line_cut_inside_its_covering_seals() -> None:
    # A trailer's covering seals hold up to 400 KB each: only its head is kept.
    line = json.dumps(
        {
            "record": "trailer",
            "events": 999_999,
            "journal_rows": 1_950_274,
            "all_sealed": True,
            "covering_seals": [{"seal_id": n, "rows_digest": "ab" * 40_000} for n in range(3)],
        }
    ).encode()
    head = line[: export.HEAD]
    assert len(line) > export.HEAD
    assert export.trailer_counts(head) == {
        "events": 999_999,
        "journal_rows": 1_950_274,
        "all_sealed": True,
    }


def test_a_whole_trailer_line_is_read_as_it_is() -> None:
    line = b'{"record":"trailer","events":3,"journal_rows":6,"all_sealed":false}'
    assert export.trailer_counts(line)["record"] == "trailer"


def test_the_newest_year_is_the_same_size_at_every_size() -> None:
    assert growth.newest(10_000_000) == 9_000_001
    assert growth.newest(300_000) == 1  # a trial smaller than a year: all of it
    since, until = growth.year_of(3_000_000)
    assert since == growth.time_of(2_000_001).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert until == growth.time_of(3_000_001).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_load_fills_events_detail_or_object_id_only_where_the_schema_has_it() -> None:
    before, after = growth.load_statement(True), growth.load_statement(False, True)
    assert "undelivered_webhooks, detail)" in before and "b::jsonb" in before
    assert "undelivered_webhooks, object_id)" in after and "->> 'id'" in after
    assert "detail" not in after.split("INSERT INTO events", 1)[1].split("FROM body", 1)[0]
    assert "object_id" not in before
    assert "{detail" not in before + after
