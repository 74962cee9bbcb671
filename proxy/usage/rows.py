"""Usage rows as the database will take them: cleaned by the model's field metadata, written in one statement.

``clean()`` turns whatever a request recorded into a row every column accepts:
integers clamped to their column type's range (the portable ranges, so a row
SQLite takes is one PostgreSQL takes too), decimals rounded and clamped to
``max_digits``/``decimal_places``, strings cut to ``max_length`` without NUL or
lone surrogates, non-finite floats and unparseable values replaced by the
field's default. It never raises, and it is driven by ``UsageRecord``'s fields,
so columns other slices add are covered without touching this module. Cleaning
is idempotent: rows read back from the spool go through it again.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from operator import itemgetter
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.base.operations import BaseDatabaseOperations

TEXT_LIMIT = 100_000  # a TextField has no max_length; nothing recorded per request needs more


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # attribute name (``key_id`` for a foreign key)
    column: str
    kind: str  # int, float, decimal, str, bool, datetime, other
    default: Any
    null: bool
    low: Any = None
    high: Any = None
    limit: int | None = None
    quantum: Decimal | None = None


def _column(f: models.Field) -> Column:
    default = f.get_default() if f.has_default() else None
    base = {"name": f.attname, "column": f.column, "default": default, "null": f.null}
    internal = f.get_internal_type()
    if isinstance(f, models.ForeignKey):
        return Column(kind="other", **base)
    if internal in BaseDatabaseOperations.integer_field_ranges:
        low, high = BaseDatabaseOperations.integer_field_ranges[internal]
        return Column(kind="int", low=low, high=high, **{**base, "default": default if f.has_default() else 0})
    if isinstance(f, models.DecimalField):
        quantum = Decimal(1).scaleb(-f.decimal_places)
        high = Decimal(10) ** (f.max_digits - f.decimal_places) - quantum
        return Column(kind="decimal", low=-high, high=high, quantum=quantum, **base)
    if isinstance(f, models.FloatField):
        return Column(kind="float", **base)
    if isinstance(f, models.BooleanField):
        return Column(kind="bool", **{**base, "default": bool(default)})
    if isinstance(f, models.DateTimeField):
        return Column(kind="datetime", **base)
    if isinstance(f, (models.CharField, models.TextField)):
        return Column(kind="str", limit=f.max_length or TEXT_LIMIT,
                      **{**base, "default": default if default is not None or f.null else ""})
    return Column(kind="other", **base)


@cache
def columns() -> tuple[Column, ...]:
    from ..models import UsageRecord

    return tuple(_column(f) for f in UsageRecord._meta.concrete_fields if not f.primary_key)


def clean(row: dict[str, Any]) -> dict[str, Any]:
    """Every column of ``row`` made storable (unknown keys are left out)."""
    out: dict[str, Any] = {}
    for col in columns():
        value = row.get(col.name)
        kind = col.kind
        if value is None:
            value = _missing(col)
        elif kind == "int":
            if type(value) is not int or not col.low <= value <= col.high:
                value = _int(value, col)
        elif kind == "str":
            if type(value) is not str:
                value = str(value)
            if len(value) > col.limit:
                value = value[:col.limit]
            if not value.isascii():
                value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
            if "\x00" in value:
                value = value.replace("\x00", "")  # PostgreSQL refuses NUL in text
        elif kind == "float":
            if type(value) is not float or not math.isfinite(value):
                value = _float(value, col)
        elif kind == "bool":
            value = value if type(value) is bool else bool(value) if isinstance(value, (int, float)) else col.default
        elif kind == "datetime":
            value = _datetime(value)
        elif kind == "decimal":
            value = _decimal(value, col)
        out[col.name] = value
    return out


def _missing(col: Column) -> Any:
    if col.null:
        return None
    if col.default is not None:
        return col.default
    return {"int": 0, "float": 0.0, "decimal": Decimal(0), "str": "", "bool": False,
            "datetime": datetime.now(UTC)}.get(col.kind)


def _int(value: Any, col: Column) -> Any:
    try:
        if isinstance(value, bool):
            number = int(value)
        elif isinstance(value, float):
            number = int(value) if math.isfinite(value) else None
        else:
            number = int(value)  # a digit string from a spool file or a Decimal
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None:
        return _missing(col)
    return min(col.high, max(col.low, number))


def _float(value: Any, col: Column) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return _missing(col)
    return number if math.isfinite(number) else _missing(col)


def _decimal(value: Any, col: Column) -> Any:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value) if isinstance(value, float) else value)
        if not number.is_finite():
            return _missing(col)
        number = number.quantize(col.quantum, rounding=ROUND_HALF_UP)
    except (TypeError, ValueError, InvalidOperation):
        return _missing(col)
    return min(col.high, max(col.low, number))


def _datetime(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return datetime.now(UTC)
    if not isinstance(value, datetime):
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_pg_types: dict[str, list[int]] = {}  # table -> its columns' type OIDs, as binary COPY needs them


def write_rows(rows: list[dict[str, Any]]) -> None:
    """Insert cleaned rows in the caller's transaction (one COPY, or INSERTs of many rows each).

    No model instances and no SQL compiled per row: this thread shares the GIL with the event loop
    serving requests. PostgreSQL takes the rows with a binary COPY (~2 us of CPU per row), SQLite with INSERTs
    of many rows each (``bulk_create`` costs ~75 us a row)."""
    from ..models import UsageRecord

    cols = columns()
    names = [c.name for c in cols]
    table = UsageRecord._meta.db_table
    db = connections[DEFAULT_DB_ALIAS]  # the thread's own connection, looked up once, not per value
    if db.vendor == "postgresql":
        column_list = ", ".join(c.column for c in cols)
        with db.cursor() as cursor:
            raw = cursor.cursor
            types = _pg_types.get(table)
            if types is None:
                raw.execute(f"SELECT {column_list} FROM {table} LIMIT 0")
                types = _pg_types[table] = [d.type_code for d in raw.description]
            # Binary, with the types given up front: psycopg neither formats text nor looks up a dumper
            # per value (2 us of CPU a row instead of 5). Cleaned rows hold exactly the columns' types.
            with raw.copy(f"COPY {table} ({column_list}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                values = itemgetter(*names)
                for row in rows:
                    copy.write_row(values(row))
    elif db.vendor == "sqlite":
        sql, params = _sqlite_insert(db, table, cols, rows)
        # Many rows per statement: executemany steps the statement once per row, releasing and
        # retaking the GIL each time, which a busy event loop turns into a wait per row.
        per = max(1, min(500, db.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(cols)))
        one = "(" + ", ".join(["?"] * len(cols)) + ")"
        with db.cursor() as cursor:
            raw = cursor.cursor
            for start in range(0, len(params), per):
                chunk = params[start:start + per]
                sqlite3.Cursor.execute(raw, sql + ", ".join([one] * len(chunk)),
                                       [value for values in chunk for value in values])
    else:
        UsageRecord.objects.bulk_create([UsageRecord(**row) for row in rows])


def _sqlite_insert(db: Any, table: str, cols: tuple[Column, ...], rows: list[dict[str, Any]]) -> tuple[str, list]:
    """The INSERT (up to ``VALUES``) and its parameters, converted as Django's SQLite backend converts them: aware
    datetimes to naive text in the connection's time zone; Decimals, ints, floats, strings and
    booleans go to the driver as they are (Django registers ``str`` as its Decimal adapter)."""
    from ..models import UsageRecord

    quote = db.ops.quote_name
    sql = f"INSERT INTO {quote(table)} ({', '.join(quote(c.column) for c in cols)}) VALUES "
    fields = {f.attname: f for f in UsageRecord._meta.concrete_fields}
    tz = db.timezone
    times = [i for i, c in enumerate(cols) if c.kind == "datetime"]
    others = [(i, fields[c.name]) for i, c in enumerate(cols) if c.kind == "other"]
    names = [c.name for c in cols]
    params = []
    for row in rows:
        values = [row[name] for name in names]
        for i in times:
            if values[i] is not None:
                values[i] = str(values[i].astimezone(tz).replace(tzinfo=None))
        for i, field in others:
            if values[i] is not None:
                values[i] = field.get_db_prep_save(values[i], db)
        params.append(values)
    return sql, params
