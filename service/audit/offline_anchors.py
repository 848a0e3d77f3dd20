"""The anchors `verify-export --anchors` holds an export against, read back through the
sinks `verify` reads (service/store/audit/sinks.py): file:///dir or s3://bucket/prefix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.domain.anchor import Anchor
from service.store.audit.sinks import FileSink, Sink, sink_for


@dataclass(frozen=True, slots=True)
class ReadAnchors:
    """The anchors read back from the sinks, and a line for each that could not be read."""

    anchors: list[Anchor]
    unreadable: list[str]


def anchor_sinks(urls: str, *, s3_endpoint: str | None) -> list[Sink]:
    """The sinks of a comma-separated list of anchor URLs (file:///dir, an existing
    directory; s3://bucket/prefix at `s3_endpoint`); ValueError naming one that is not."""
    sinks: list[Sink] = []
    for url in (u.strip() for u in urls.split(",")):
        if not url:
            continue
        sink = sink_for(url, s3_endpoint=s3_endpoint)
        if isinstance(sink, FileSink) and not sink.directory.is_dir():
            raise ValueError(f"{url}: no such directory")
        sinks.append(sink)
    if not sinks:
        raise ValueError("names no anchor sink")
    return sinks


async def read_anchors(sinks: Sequence[Sink]) -> ReadAnchors:
    """Every anchor the sinks hold (the reader `verify` uses). A sink that cannot be read at
    all is `anchor_missing`, as in `verify`: its anchors cannot vouch for the export."""
    anchors: list[Anchor] = []
    unreadable: list[str] = []
    for sink in sinks:
        try:
            back = await sink.read()
        except Exception as exc:  # noqa: BLE001 - any failure to read is reported
            unreadable.append(f"anchor_missing: the anchors of {sink.url} cannot be read: {exc}")
            continue
        unreadable += [
            f"malformed anchor {name} in {sink.url}: {error}"
            for name, error in sorted(back.unreadable.items())
        ]
        anchors += [back.anchors[name] for name in sorted(back.anchors)]
    return ReadAnchors(anchors, unreadable)
