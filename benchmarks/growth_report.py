"""The growth measurements' figures, per backend and per index, as JSON and as Markdown
tables."""

from __future__ import annotations

import platform
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Final

from benchmarks.sizes import TABLES, Relation, relation_order
from tracker import storage

BATCH: Final = 500  # deliveries per apply_many, as the benchmark's default
PER_DAY: Final = 1_000_000  # deliveries a day, for the retention arithmetic
RETAINED_DAYS: Final = 90
GB: Final = 1e9


@dataclass
class BackendFigures:
    backend: str
    version: str
    rows: dict[str, int]
    outcomes: dict[str, int]
    body_bytes: float  # mean length of a logged body
    history_bytes: float  # mean length of a call's history (JSON text in its row)
    relations: list[Relation]
    notes: list[str] = field(default_factory=list)

    def bytes_of(self, table: str, *, packed: bool = False) -> int:
        return sum(
            relation.packed if packed else relation.written
            for relation in self.relations
            if relation.table == table
        )

    def per_row(self, table: str, *, packed: bool = False) -> float:
        return self.bytes_of(table, packed=packed) / max(self.rows[table], 1)

    @property
    def per_call(self) -> float:
        return self.per_row(storage.calls.name)

    @property
    def per_delivery(self) -> float:
        return self.per_row(storage.events.name)

    @property
    def per_transfer(self) -> float:
        return self.per_row(storage.transfers.name)

    @property
    def everything_per_call(self) -> float:
        """Every table's bytes over the calls: what a call costs with its log and attempts."""
        return sum(self.bytes_of(table) for table in TABLES) / max(self.rows[TABLES[0]], 1)

    def per_day(self, deliveries: int) -> dict[str, float]:
        """Bytes a day of each table at `deliveries` a day, in this workload's proportions."""
        scale = deliveries / max(self.rows[storage.events.name], 1)
        return {table: self.bytes_of(table) * scale for table in TABLES}


@dataclass(frozen=True)
class IndexWrites:
    """WAL pages (frames) a delivery writes, one commit each, with every index and without one."""

    deliveries: int  # the deliveries counted, after the rest of the workload was applied
    page_size: int
    with_every_index: float
    without: dict[str, float]  # index -> pages per delivery once it is dropped

    def cost(self, index: str) -> float:
        return self.with_every_index - self.without[index]


@dataclass
class Report:
    calls_asked: int
    seed: int
    repeated: float
    deliveries: int
    machine: dict[str, str]
    backends: list[BackendFigures]
    index_writes: IndexWrites | None

    def as_json(self) -> dict[str, Any]:
        return {
            "calls_asked": self.calls_asked,
            "seed": self.seed,
            "repeated": self.repeated,
            "deliveries": self.deliveries,
            "machine": self.machine,
            "backends": [
                {
                    **asdict(figures),
                    "per_call": figures.per_call,
                    "per_delivery": figures.per_delivery,
                    "per_transfer": figures.per_transfer,
                    "everything_per_call": figures.everything_per_call,
                    "per_day": {
                        "deliveries": PER_DAY,
                        "bytes": figures.per_day(PER_DAY),
                        "calls": PER_DAY
                        * figures.rows[storage.calls.name]
                        / max(figures.rows[storage.events.name], 1),
                    },
                }
                for figures in self.backends
            ],
            "index_writes": None
            if self.index_writes is None
            else {
                **asdict(self.index_writes),
                "cost": {
                    index: self.index_writes.cost(index) for index in self.index_writes.without
                },
            },
        }

    def as_text(self) -> str:
        """Markdown tables, ready to paste into docs/growth.md."""
        lines = [
            f"{self.deliveries:,} deliveries telling of {self.calls_asked:,} calls (seed "
            f"{self.seed}; {self.repeated:.0%} of the deliveries sent twice), applied with "
            f"apply_many({BATCH})",
            "machine: " + ", ".join(f"{key} {value}" for key, value in self.machine.items()),
            "",
            "| backend | per call | per delivery | mean body | per transfer attempt "
            "| all tables per call |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for figures in self.backends:
            lines.append(
                f"| {figures.backend} {figures.version} | {figures.per_call:,.0f} "
                f"| {figures.per_delivery:,.0f} | {figures.body_bytes:,.0f} "
                f"| {figures.per_transfer:,.0f} | {figures.everything_per_call:,.0f} |"
            )
        lines += [
            "",
            "Bytes as written (packed in brackets) per row of the table, for its rows and for "
            "each index:",
            "",
            "| table / index | rows held | " + " | ".join(f.backend for f in self.backends) + " |",
            "|---|---:|" + "---:|" * len(self.backends),
        ]
        lines += self._relation_lines()
        if any(f.backend == "mariadb" for f in self.backends):
            lines += ["", "MariaDB has no partial indexes: each of its indexes holds every row."]
        first = self.backends[0] if self.backends else None
        if first is not None:
            lines += ["", "Rows: " + ", ".join(f"{t} {first.rows[t]:,}" for t in TABLES)]
        for figures in self.backends:
            outcomes = ", ".join(f"{k} {n:,}" for k, n in sorted(figures.outcomes.items()))
            extra = "; ".join(figures.notes)
            lines.append(
                f"{figures.backend}: outcomes {outcomes}; mean history "
                f"{figures.history_bytes:,.0f} bytes per call" + (f"; {extra}" if extra else "")
            )
        if first is not None:
            rows = {table: PER_DAY * first.rows[table] / first.rows[TABLES[1]] for table in TABLES}
            lines += [
                "",
                f"At {PER_DAY:,} deliveries a day ({rows[TABLES[0]]:,.0f} calls and "
                f"{rows[TABLES[2]]:,.0f} transfer attempts in this workload's proportions), "
                "bytes as written:",
                "",
                "| backend | log a day | calls a day | transfer attempts a day "
                f"| log kept {RETAINED_DAYS} days | calls and attempts kept a year |",
                "|---|---:|---:|---:|---:|---:|",
            ]
        for figures in self.backends:
            day = figures.per_day(PER_DAY)
            log, calls, attempts = (day[table] for table in (TABLES[1], TABLES[0], TABLES[2]))
            lines.append(
                f"| {figures.backend} | {log / GB:.2f} GB | {calls / GB:.2f} GB "
                f"| {attempts / GB:.3f} GB | {RETAINED_DAYS * log / GB:.0f} GB "
                f"| {365 * (calls + attempts) / GB:.0f} GB |"
            )
        if self.index_writes is not None:
            writes = self.index_writes
            lines += [
                "",
                f"SQLite WAL pages ({writes.page_size:,} bytes) per delivery, one commit each, "
                f"over the last {writes.deliveries} deliveries: {writes.with_every_index:.2f} "
                "with every index",
                "",
                "| index dropped | pages per delivery | the index's share | in bytes |",
                "|---|---:|---:|---:|",
            ]
            for index, pages in writes.without.items():
                share = writes.cost(index)
                lines.append(
                    f"| {index} | {pages:.2f} | {share:+.2f} | {share * writes.page_size:+,.0f} |"
                )
        return "\n".join(lines)

    def _relation_lines(self) -> list[str]:
        keys: dict[tuple[str, str], Relation] = {}
        for figures in self.backends:
            for relation in figures.relations:
                # The first backend that names a partial index's condition says it.
                held = keys.get((relation.table, relation.name))
                if held is None or (held.condition is None and relation.condition is not None):
                    keys[(relation.table, relation.name)] = relation
        lines = []
        for (table, name), relation in sorted(
            keys.items(), key=lambda item: relation_order((item[0], 0))
        ):
            label = f"{name} (rows)" if name == table else name
            if relation.condition is not None:
                label += f" where {relation.condition}"
            cells = []
            for figures in self.backends:
                mine = next(
                    (r for r in figures.relations if (r.table, r.name) == (table, name)), None
                )
                rows = max(figures.rows[table], 1)
                cells.append(
                    "in rows"
                    if mine is None
                    else f"{mine.written / rows:,.1f} ({mine.packed / rows:,.1f})"
                )
            lines.append(f"| {label} | {relation.entries:,} | {' | '.join(cells)} |")
        return lines


def describe_machine() -> dict[str, str]:
    machine = {"platform": platform.platform(), "python": platform.python_version()}
    for package in ("tracker", "sqlalchemy", "psycopg", "pymysql"):
        with suppress(metadata.PackageNotFoundError):
            machine[package] = metadata.version(package)
    return machine
