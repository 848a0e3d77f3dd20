"""The projections by name, and the tables each one owns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Projection:
    """A projection: its name (and checkpoint's) and the tables it owns."""

    name: str
    tables: tuple[str, ...]

    def live_tables(self) -> dict[str, str]:
        """Each of its tables, by its own name."""
        return {t: t for t in self.tables}


IDENTITIES = Projection("identities", ("identities", "identity_controls"))
TRANSFERS = Projection("transfers", ("transfers",))
ORCHESTRATIONS = Projection("orchestrations", ("orchestrations",))
PROJECTIONS: dict[str, Projection] = {p.name: p for p in (IDENTITIES, TRANSFERS, ORCHESTRATIONS)}
