"""The warehouse: a Dagster IO manager that stores Polars DataFrames as DuckDB tables.

Asset key `["raw", "weather"]` is table `raw.weather`; a one-part key `weather` is `main.weather`.
Every write replaces the table (or, for a partitioned asset, that partition's rows) inside one
transaction, so a failed step leaves the previous table whole. Each write also stores the
frame's Polars schema in `_portal.table_schemas`, which lets a read restore the types DuckDB
does not carry (time zone names, categoricals, all-null columns).

Connections are opened per read or write and closed at once. When another process holds the
file's lock, a connection waits up to `lock_timeout` seconds before failing with a message
that names the file and the holding process.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

SCHEMA_TABLE = "_portal.table_schemas"
LOCK_MESSAGE = "Could not set lock on file"


class WarehouseLocked(RuntimeError):
    """The DuckDB file stayed locked by another process for longer than the lock timeout."""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    """Quote a SQL string literal, for statements such as COMMENT ON that take no parameters."""
    return "'" + text.replace("'", "''") + "'"


def table_of(asset_key: dg.AssetKey) -> tuple[str, str]:
    """Return (schema, table) for an asset key."""
    path = asset_key.path
    return (path[-2], path[-1]) if len(path) > 1 else ("main", path[-1])


def is_local_file(connection: str) -> bool:
    return not (connection == ":memory:" or re.match(r"^[a-z]+:", connection))


@contextmanager
def connect(connection: str, lock_timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a short-lived connection, waiting for another process's lock up to `lock_timeout`."""
    if is_local_file(connection):
        Path(connection).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout
    pause = 0.05
    while True:
        try:
            con = duckdb.connect(connection)
            break
        except duckdb.IOException as error:
            if LOCK_MESSAGE not in str(error):
                raise
            if time.monotonic() + pause > deadline:
                holder = re.search(r"held in (.+?)(?: by user|\. See|$)", str(error))
                raise WarehouseLocked(
                    f"warehouse {connection} is still locked after {lock_timeout:.0f} s by "
                    f"{holder.group(1) if holder else 'another process'}. Stop that process or "
                    "raise PORTAL_LOCK_TIMEOUT."
                ) from error
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    try:
        # Reads then return timestamps in UTC whatever the machine's zone; stored schemas
        # restore each column's own zone.
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def schema_to_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.head(0).write_ipc(buffer)
    return buffer.getvalue()


def schema_from_bytes(blob: bytes) -> pl.Schema:
    return pl.read_ipc(io.BytesIO(blob)).schema


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(found and found[0])


def stored_schema(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> pl.Schema | None:
    if not table_exists(con, "_portal", "table_schemas"):
        return None
    row = con.execute(
        f"SELECT polars_schema FROM {SCHEMA_TABLE} WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchone()
    return schema_from_bytes(row[0]) if row else None


def record_schema(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, polars_schema: pl.Schema
) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS _portal")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (table_schema VARCHAR, table_name VARCHAR, "
        "polars_schema BLOB, written_at TIMESTAMPTZ, PRIMARY KEY (table_schema, table_name))"
    )
    blob = schema_to_bytes(pl.DataFrame(schema=polars_schema))
    con.execute(
        f"INSERT OR REPLACE INTO {SCHEMA_TABLE} VALUES (?, ?, ?, now())", [schema, table, blob]
    )


def partition_filter(
    context: dg.OutputContext | dg.InputContext, column: str
) -> tuple[str, list]:
    """Return a SQL condition (and its parameters) selecting the context's partition rows."""
    target = quote(column)
    partitions_def = context.asset_partitions_def
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        window = context.asset_partitions_time_window
        return f"{target} >= ? AND {target} < ?", [window.start, window.end]
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
            f"{context.asset_key.to_user_string()}: {outside} rows fall outside partition "
            f"{context.asset_partition_keys}; a partition's output may hold only its own rows"
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


def restore_types(frame: pl.DataFrame, schema: pl.Schema | None) -> pl.DataFrame:
    if schema is None:
        return frame
    return frame.with_columns(
        pl.col(name).cast(dtype) for name, dtype in schema.items() if name in frame.columns
    )


def select_sql(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, columns: list[str] | None
) -> str:
    """Build a SELECT that returns INTERVAL columns as microseconds, which Polars can import."""
    described = con.execute(f"DESCRIBE {quote(schema)}.{quote(table)}").fetchall()
    expressions = []
    for name, duck_type, *_ in described:
        if columns is not None and name not in columns:
            continue
        if duck_type == "INTERVAL":
            expressions.append(f"epoch_us({quote(name)}) AS {quote(name)}")
        else:
            expressions.append(quote(name))
    return f"SELECT {', '.join(expressions)} FROM {quote(schema)}.{quote(table)}"


def comment_on(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, context: dg.OutputContext
) -> None:
    """Copy the `table_comment` and column descriptions of the asset's metadata into DuckDB."""
    target = f"{quote(schema)}.{quote(table)}"
    description = context.definition_metadata.get("table_comment")
    if description:
        con.execute(f"COMMENT ON TABLE {target} IS {literal(str(description))}")
    column_schema = context.definition_metadata.get("dagster/column_schema")
    if isinstance(column_schema, dg.TableSchema):
        present = {row[0] for row in con.execute(f"DESCRIBE {target}").fetchall()}
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
        target = f"{quote(schema)}.{quote(table)}"

        with connect(self.connection, self.lock_timeout) as con:
            con.register("incoming", obj.to_arrow())
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                if context.has_asset_partitions and table_exists(con, schema, table):
                    column = self.partition_column(context)
                    condition, parameters = partition_filter(context, column)
                    check_partition_rows(con, condition, parameters, context)
                    polars_schema = partitioned_schema(
                        stored_schema(con, schema, table), obj.schema
                    )
                    con.execute(
                        f"CREATE OR REPLACE TABLE {target} AS "
                        f"(SELECT * FROM {target} WHERE NOT coalesce({condition}, false)) "
                        "UNION ALL BY NAME (SELECT * FROM incoming)",
                        parameters,
                    )
                else:
                    if context.has_asset_partitions:
                        column = self.partition_column(context)
                        condition, parameters = partition_filter(context, column)
                        check_partition_rows(con, condition, parameters, context)
                    polars_schema = obj.schema
                    con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM incoming")
                record_schema(con, schema, table, polars_schema)
                comment_on(con, schema, table, context)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            rows = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]

        context.add_output_metadata(
            {"table": f"{schema}.{table}", "rows_in_table": dg.MetadataValue.int(rows)}
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        schema, table = table_of(context.asset_key)
        with connect(self.connection, self.lock_timeout) as con:
            if not table_exists(con, schema, table):
                raise FileNotFoundError(
                    f"table {schema}.{table} is not in warehouse {self.connection}; materialize "
                    f"{context.asset_key.to_user_string()} first"
                )
            columns = (context.definition_metadata or {}).get("columns")
            query = select_sql(con, schema, table, columns)
            parameters: list = []
            if context.has_asset_partitions:
                condition, parameters = partition_filter(context, self.partition_column(context))
                query += f" WHERE {condition}"
            frame = pl.from_arrow(con.sql(query, params=parameters or None).to_arrow_table())
            return restore_types(frame, stored_schema(con, schema, table))

    @staticmethod
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
