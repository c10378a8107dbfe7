"""The warehouse: a Dagster IO manager that stores Polars DataFrames as DuckDB tables.

Asset key `["raw", "weather"]` is table `raw.weather`; a one-part key `weather` is `main.weather`.
Statements name tables with the catalog too (`"raw"."raw"."weather"` in a file `raw.duckdb`),
because DuckDB cannot tell a schema from a database file of the same name.

Every write replaces the table inside one transaction, so a failed step leaves the previous
table whole, and a changed schema (added, removed or retyped columns) simply replaces the old
one. Each write also stores the frame's Polars schema in `_portal.table_schemas`, which lets a
read restore the types DuckDB does not carry (time zone names, categoricals, enums, all-null
columns, duration units). Durations are stored as DuckDB INTERVALs, which cut them to whole
microseconds.

A partitioned asset names the column that contains its partition in `partition_expr` metadata.
For time-window partitions a date or timestamp column must lie in the window (a naive timestamp
is wall-clock time in the partitions' time zone); any other column must equal the partition key.
A write replaces that partition's rows and keeps the others; it rejects rows that lie outside
the partition. When a partition's schema differs from the kept rows, the table takes the union
of the columns (missing values are null) and a retyped column takes DuckDB's common type.
A read of a partition returns only its rows.

Connections are opened per read or write and closed at once. When another process holds the
file's lock, a connection waits up to `lock_timeout` seconds before raising `WarehouseLocked`
with a message that names the file and the holding process.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

logger = logging.getLogger(__name__)

SCHEMA_TABLE = ("_portal", "table_schemas")
LOCK_MESSAGE = "Could not set lock on file"
NAIVE_TIMESTAMP_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"}
ZONED_TIMESTAMP_TYPES = {"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ_NS"}
TEMPORAL_TYPES = NAIVE_TIMESTAMP_TYPES | ZONED_TIMESTAMP_TYPES | {"DATE"}


class WarehouseLocked(RuntimeError):
    """The DuckDB file stayed locked by another process for longer than the lock timeout."""


class TableNotFound(LookupError):
    """The warehouse has no table for the requested asset."""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    """Quote a SQL string literal, for statements such as COMMENT ON that take no parameters."""
    return "'" + text.replace("'", "''") + "'"


def table_of(asset_key: dg.AssetKey) -> tuple[str, str]:
    """Return (schema, table) for an asset key."""
    path = asset_key.path
    return (path[-2], path[-1]) if len(path) > 1 else ("main", path[-1])


def qualified(con: duckdb.DuckDBPyConnection, *names: str) -> str:
    """Return `"catalog"."schema"."table"`, which stays unambiguous whatever the file's name."""
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    return ".".join(quote(name) for name in (catalog, *names))


def is_local_file(connection: str) -> bool:
    return not (connection == ":memory:" or re.match(r"^[a-z]+:", connection))


def lock_holder(error: duckdb.IOException) -> str:
    """Return the process named in DuckDB's lock error, e.g. `/usr/bin/python3 (PID 4841)`."""
    holder = re.search(r"held in (.+?)(?: by user|\. See|$)", str(error))
    return holder.group(1) if holder else "another process"


def open_waiting(connection: str, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """Open a connection, retrying while another process holds the file's lock."""
    deadline = time.monotonic() + lock_timeout
    attempt = 0
    while True:
        try:
            return duckdb.connect(connection)
        except duckdb.IOException as error:
            if LOCK_MESSAGE not in str(error):
                raise
            remaining = deadline - time.monotonic()
            pause = min(0.05 * 2**attempt, 0.2, max(remaining, 0))
            if remaining <= 0:
                raise WarehouseLocked(
                    f"warehouse {connection} is still locked after {lock_timeout:g} s by "
                    f"{lock_holder(error)}. Stop that process or raise PORTAL_LOCK_TIMEOUT."
                ) from error
            if attempt == 0:
                logger.info(
                    "warehouse %s is locked by %s; waiting up to %g s",
                    connection,
                    lock_holder(error),
                    lock_timeout,
                )
            time.sleep(pause)
            attempt += 1


@contextmanager
def connect(connection: str, lock_timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a short-lived connection, waiting for another process's lock up to `lock_timeout`."""
    if is_local_file(connection):
        Path(connection).parent.mkdir(parents=True, exist_ok=True)
    con = open_waiting(connection, lock_timeout)
    try:
        # Reads then return timestamps in UTC whatever the machine's zone; stored schemas
        # restore each column's own zone.
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def schema_to_bytes(polars_schema: pl.Schema) -> bytes:
    buffer = io.BytesIO()
    pl.DataFrame(schema=polars_schema).write_ipc(buffer)
    return buffer.getvalue()


def schema_from_bytes(blob: bytes) -> pl.Schema:
    return pl.read_ipc(io.BytesIO(blob)).schema


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(found and found[0])


def column_types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Return {column: DuckDB type} of a table or registered view."""
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {relation}").fetchall()}


def stored_schema(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> pl.Schema | None:
    if not table_exists(con, *SCHEMA_TABLE):
        return None
    row = con.execute(
        f"SELECT polars_schema FROM {qualified(con, *SCHEMA_TABLE)} "
        "WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return schema_from_bytes(row[0]) if row else None


def record_schema(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, polars_schema: pl.Schema
) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {qualified(con, SCHEMA_TABLE[0])}")
    target = qualified(con, *SCHEMA_TABLE)
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {target} (table_schema VARCHAR, table_name VARCHAR, "
        "polars_schema BLOB, written_at TIMESTAMPTZ, PRIMARY KEY (table_schema, table_name))"
    )
    blob = schema_to_bytes(polars_schema)
    con.execute(f"INSERT OR REPLACE INTO {target} VALUES (?, ?, ?, now())", [schema, table, blob])


def partition_column(context: dg.OutputContext | dg.InputContext) -> str:
    metadata = (
        context.definition_metadata
        if isinstance(context, dg.OutputContext)
        else context.upstream_output.definition_metadata
    ) or {}
    column = metadata.get("partition_expr")
    if not column:
        raise ValueError(
            f"{context.asset_key.to_user_string()} is partitioned but declares no "
            "'partition_expr' metadata naming the column that holds the partition key"
        )
    return column


def window_bounds(window: dg.TimeWindow, duck_type: str) -> list:
    """Return the window's start and end in the form that compares right with `duck_type`."""
    if duck_type == "DATE":
        return [window.start.date(), window.end.date()]
    if duck_type in NAIVE_TIMESTAMP_TYPES:
        # A naive timestamp holds wall-clock time in the partitions' own time zone.
        return [window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)]
    return [window.start.astimezone(dt.UTC), window.end.astimezone(dt.UTC)]


def partition_filter(
    context: dg.OutputContext | dg.InputContext, relation: str, con: duckdb.DuckDBPyConnection
) -> tuple[str, list]:
    """Return a SQL condition (and its parameters) that selects the context's partition rows."""
    column = partition_column(context)
    types = column_types(con, relation)
    if column not in types:
        raise ValueError(
            f"{context.asset_key.to_user_string()}: partition_expr names column {column!r}, "
            f"which is not among the columns {sorted(types)}"
        )
    target = quote(column)
    duck_type = types[column]
    is_time_window = isinstance(context.asset_partitions_def, dg.TimeWindowPartitionsDefinition)
    if is_time_window and duck_type in TEMPORAL_TYPES:
        bounds = window_bounds(context.asset_partitions_time_window, duck_type)
        return f"{target} >= ? AND {target} < ?", bounds
    keys = list(context.asset_partition_keys)
    return f"{target} IN ({', '.join('?' for _ in keys)})", keys


def check_partition_rows(
    con: duckdb.DuckDBPyConnection, condition: str, parameters: list, context: dg.OutputContext
) -> None:
    """Reject rows outside the partition, which would otherwise survive the next rewrite."""
    outside = con.execute(
        f"SELECT count(*) FROM incoming WHERE NOT coalesce({condition}, false)", parameters
    ).fetchone()[0]
    if outside:
        raise ValueError(
            f"{context.asset_key.to_user_string()}: {outside} rows have a "
            f"{partition_column(context)!r} outside partition {context.asset_partition_keys} "
            "(or null); a partition's output may hold only its own rows"
        )


def partitioned_schema(old: pl.Schema | None, new: pl.Schema) -> pl.Schema:
    """Merge the schema of kept rows with the new partition's; a retyped column stays untyped."""
    merged = dict(new)
    for name, dtype in (old or {}).items():
        if name not in merged:
            merged[name] = dtype
        elif merged[name] != dtype:
            del merged[name]
    return pl.Schema(merged)


def replace_table(con: duckdb.DuckDBPyConnection, target: str, frame: pl.DataFrame) -> pl.Schema:
    con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM incoming")
    return frame.schema


def replace_partition(
    con: duckdb.DuckDBPyConnection,
    context: dg.OutputContext,
    names: tuple[str, str],
    frame: pl.DataFrame,
) -> pl.Schema:
    """Write the partition's rows in place of the old ones, keeping every other partition."""
    target = qualified(con, *names)
    condition, parameters = partition_filter(context, "incoming", con)
    check_partition_rows(con, condition, parameters, context)
    if not table_exists(con, *names):
        return replace_table(con, target, frame)

    condition, parameters = partition_filter(context, target, con)
    con.execute(
        f"CREATE OR REPLACE TABLE {target} AS "
        f"(SELECT * FROM {target} WHERE NOT coalesce({condition}, false)) "
        "UNION ALL BY NAME (SELECT * FROM incoming)",
        parameters,
    )
    return partitioned_schema(stored_schema(con, *names), frame.schema)


def restore_types(frame: pl.DataFrame, schema: pl.Schema | None) -> pl.DataFrame:
    if schema is None:
        return frame
    columns = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            continue
        column = pl.col(name)
        if isinstance(dtype, pl.Duration) and frame.schema[name].is_integer():
            column = column.cast(pl.Duration("us"))  # select_sql reads INTERVAL as microseconds
        columns.append(column.cast(dtype))
    return frame.with_columns(columns)


def select_sql(con: duckdb.DuckDBPyConnection, target: str, columns: list[str] | None) -> str:
    """Build a SELECT that returns INTERVAL columns as microseconds, which Polars can import."""
    expressions = []
    for name, duck_type in column_types(con, target).items():
        if columns is not None and name not in columns:
            continue
        if duck_type == "INTERVAL":
            expressions.append(f"epoch_us({quote(name)}) AS {quote(name)}")
        else:
            expressions.append(quote(name))
    return f"SELECT {', '.join(expressions)} FROM {target}"


def read_stored(
    con: duckdb.DuckDBPyConnection,
    names: tuple[str, str],
    columns: list[str] | None = None,
    condition: str = "",
    parameters: list | None = None,
) -> pl.DataFrame:
    """Read a stored table, or its rows that meet `condition`, with its Polars types restored."""
    query = select_sql(con, qualified(con, *names), columns)
    if condition:
        query += f" WHERE {condition}"
    frame = pl.from_arrow(con.sql(query, params=parameters or None).to_arrow_table())
    return restore_types(frame, stored_schema(con, *names))


def comment_on(con: duckdb.DuckDBPyConnection, target: str, context: dg.OutputContext) -> None:
    """Copy the `table_comment` and column descriptions of the asset's metadata into DuckDB."""
    description = context.definition_metadata.get("table_comment")
    if description:
        con.execute(f"COMMENT ON TABLE {target} IS {literal(str(description))}")
    column_schema = context.definition_metadata.get("dagster/column_schema")
    if isinstance(column_schema, dg.TableSchema):
        present = column_types(con, target)
        for column in column_schema.columns:
            if column.description and column.name in present:
                con.execute(
                    f"COMMENT ON COLUMN {target}.{quote(column.name)} "
                    f"IS {literal(column.description)}"
                )


class DuckDBPolarsIOManager(dg.ConfigurableIOManager):
    """Stores each asset's Polars DataFrame as a DuckDB table, replaced atomically on write."""

    connection: str
    lock_timeout: float = 120.0

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                "the warehouse stores only polars.DataFrame"
            )
        schema, table = table_of(context.asset_key)

        with connect(self.connection, self.lock_timeout) as con:
            con.register("incoming", obj.to_arrow())
            target = qualified(con, schema, table)
            with transaction(con):
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {qualified(con, schema)}")
                if context.has_asset_partitions:
                    polars_schema = replace_partition(con, context, (schema, table), obj)
                else:
                    polars_schema = replace_table(con, target, obj)
                record_schema(con, schema, table, polars_schema)
                comment_on(con, target, context)
            rows = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]

        context.add_output_metadata(
            {"table": f"{schema}.{table}", "rows_in_table": dg.MetadataValue.int(rows)}
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        schema, table = table_of(context.asset_key)
        if is_local_file(self.connection) and not Path(self.connection).exists():
            raise self.missing(context, schema, table)

        with connect(self.connection, self.lock_timeout) as con:
            if not table_exists(con, schema, table):
                raise self.missing(context, schema, table)
            columns = (context.definition_metadata or {}).get("columns")
            condition, parameters = "", []
            if context.has_asset_partitions:
                target = qualified(con, schema, table)
                condition, parameters = partition_filter(context, target, con)
            return read_stored(con, (schema, table), columns, condition, parameters)

    def missing(self, context: dg.InputContext, schema: str, table: str) -> TableNotFound:
        return TableNotFound(
            f"table {schema}.{table} is not in warehouse {self.connection}; materialize "
            f"{context.asset_key.to_user_string()} first"
        )


def read_table(connection: str, lock_timeout: float, asset_key: dg.AssetKey) -> pl.DataFrame | None:
    """Return an asset's whole stored table with its Polars types, or None when it is not stored.

    For assets that read their own previous version, such as tables that accumulate rows.
    """
    schema, table = table_of(asset_key)
    if is_local_file(connection) and not Path(connection).exists():
        return None
    with connect(connection, lock_timeout) as con:
        if not table_exists(con, schema, table):
            return None
        return read_stored(con, (schema, table))
