"""The SQL schema of the stores, declared once: SQLite and PostgreSQL derive from it.

:data:`TABLES` and :data:`INDEXES` are the current schema: tables, columns (each with a
portable type that :data:`TYPES` maps per dialect), primary keys and indexes. Each SQL
backend creates a new store from :func:`create_statements` and takes its column lists
from here. A store written by an earlier release is brought up to date by its backend's
append-only ``MIGRATIONS`` instead (released entries are history and never change);
``tests/store/test_schema.py`` checks that a store migrated from the first version ends
up exactly as the one created from this declaration.

Changing the schema therefore takes two edits: the declaration here, and a new
``MIGRATIONS`` entry in each SQL backend that moves an existing store to it. Never rename
a table or a column: stores already written must keep opening.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..aggregates import FIELDS, Cell
from ..metrics import MOMENTS

__all__ = (
    "CALLS", "CELLS", "HIST", "INDEXES", "METRICS", "PENDING", "STATE", "TABLES", "TRAIL", "TYPES", "Column", "Index",
    "Table", "create_statements", "index_sql", "table_sql",
)

#: portable column type -> the type each dialect declares (SQLite: its type affinities,
#: and exactly ``INTEGER`` for a rowid-alias primary key)
TYPES: dict[str, dict[str, str]] = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "int64": "INTEGER", "float": "REAL", "bool": "INTEGER"},
    "postgresql": {"text": "text", "int": "integer", "int64": "bigint", "float": "double precision",
                   "bool": "boolean"},
}
#: portable column type -> the PostgreSQL type of array parameters (``%s::int8[]``)
PG_ARRAY_TYPES: dict[str, str] = {"text": "text", "int": "int4", "int64": "int8", "float": "float8", "bool": "bool"}


@dataclass(frozen=True)
class Column:
    """One column: ``type`` is portable (a key of ``TYPES[dialect]``); ``default`` a SQL
    literal both dialects read alike. Primary-key columns need no ``not_null``."""

    name: str
    type: str
    not_null: bool = False
    default: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def types(self, names: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The portable types of ``names`` (default: every column, in order)."""
        by_name = {c.name: c.type for c in self.columns}
        return tuple(by_name[n] for n in (names or self.column_names))


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]


def _text(name: str, not_null: bool = False) -> Column:
    return Column(name, "text", not_null)


_FLOAT_FIELDS = frozenset(f.name for f in fields(Cell) if f.name in FIELDS and isinstance(getattr(Cell(), f.name), float))
#: the cell key columns, in the order of :data:`~sil_core.aggregates.CellKey`
CELL_KEY = (_text("target", True), _text("version", True), _text("arm", True), Column("hour", "int64", True))

CALLS = Table("sil_calls", (
    _text("id"), _text("target", True), Column("ts", "float", True), Column("duration_s", "float", True),
    _text("outcome", True), _text("error_type"), _text("error_message"), _text("version"), _text("arm"),
    Column("attempt", "int", True, "1"), Column("score", "float"), _text("context"),
    Column("feedback_success", "bool"), Column("feedback_score", "float"),
    Column("feedback_success_ts", "float"), Column("feedback_score_ts", "float"),
    _text("metrics"), _text("feedback_metrics"),  # JSON: name -> value, name -> [value, ts given]
), ("id",))
CELLS = Table("sil_cells", (
    *CELL_KEY,
    *(Column(name, "float" if name in _FLOAT_FIELDS else "int64", True, "0") for name in FIELDS),
), ("target", "hour", "version", "arm"))
HIST = Table("sil_hist", (
    *CELL_KEY, Column("bin", "int", True), Column("n", "int64", True),
), ("target", "hour", "version", "arm", "bin"))
#: per-metric moments of a cell (``sil_core.metrics.MOMENTS``), kept like the histogram
METRICS = Table("sil_metrics", (
    *CELL_KEY, _text("name", True),
    *(Column(m, "int64" if m.endswith("n") else "float", True, "0") for m in MOMENTS),
), ("target", "hour", "version", "arm", "name"))
STATE = Table("sil_state", (
    _text("kind", True), _text("key", True), _text("value", True), Column("rev", "int64", True),
), ("kind", "key"))
TRAIL = Table("sil_trail", (
    Column("seq", "int64"), _text("target"), _text("hash", True), _text("event", True),
), ("seq",))
PENDING = Table("sil_pending_feedback", (
    _text("call_id"), Column("success", "bool"), Column("success_ts", "float"), Column("score", "float"),
    Column("score_ts", "float"), Column("received", "float", True),
    _text("metrics"),  # JSON: name -> [value, ts given]
), ("call_id",))

TABLES: tuple[Table, ...] = (CALLS, CELLS, HIST, STATE, TRAIL, PENDING, METRICS)

INDEXES: tuple[Index, ...] = (
    Index("sil_calls_target_ts", "sil_calls", ("target", "ts")),  # read_calls of a target, by time
    Index("sil_calls_target_version", "sil_calls", ("target", "version")),
    Index("sil_calls_ts", "sil_calls", ("ts",)),  # retain(max_age_s=...), read_calls of every target
    Index("sil_trail_target", "sil_trail", ("target", "seq")),
    Index("sil_pending_feedback_received", "sil_pending_feedback", ("received",)),
)


def _qualified(table: str, schema: str | None) -> str:
    return table if schema is None else f"{schema}.{table}"


def table_sql(table: Table, dialect: str, schema: str | None = None) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of one table (``schema``: a quoted schema name)."""
    types = TYPES[dialect]
    single = table.primary_key[0] if len(table.primary_key) == 1 else None
    parts = []
    for c in table.columns:
        part = f"{c.name} {types[c.type]}"
        if c.name == single:
            part += " PRIMARY KEY"
        if c.not_null:
            part += " NOT NULL"
        if c.default is not None:
            part += f" DEFAULT {c.default}"
        parts.append(part)
    if single is None:
        parts.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    body = ",\n    ".join(parts)
    return f"CREATE TABLE IF NOT EXISTS {_qualified(table.name, schema)} (\n    {body}\n)"


def index_sql(index: Index, schema: str | None = None) -> str:
    """``CREATE INDEX IF NOT EXISTS`` of one index (the same in both dialects)."""
    return f"CREATE INDEX IF NOT EXISTS {index.name} ON {_qualified(index.table, schema)} ({', '.join(index.columns)})"


def create_statements(dialect: str, schema: str | None = None) -> list[str]:
    """Every statement that creates the current schema in an empty database."""
    return [*(table_sql(t, dialect, schema) for t in TABLES), *(index_sql(i, schema) for i in INDEXES)]
