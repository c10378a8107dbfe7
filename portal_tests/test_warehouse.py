"""Tests of the DuckDB warehouse IO manager: types, atomic writes, partitions, locks, comments."""

import datetime as dt
import decimal
import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from portal import warehouse
from portal.warehouse import DuckDBPolarsIOManager, TableNotFound, WarehouseLocked

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ZONES = ["UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"]
READINGS = dg.AssetKey(["raw", "readings"])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "w.duckdb"


@pytest.fixture
def manager(path: Path) -> DuckDBPolarsIOManager:
    return DuckDBPolarsIOManager(connection=str(path), lock_timeout=10)


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch):
    """Return a function that sets the local time zone, which is restored after the test."""

    def set_zone(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def typed_frame() -> pl.DataFrame:
    """Return a frame with one column of each type the warehouse must keep."""
    paris = pl.Series([dt.datetime(2024, 3, 31, 1, 30), dt.datetime(2024, 10, 27, 2, 30)])
    return pl.DataFrame(
        {
            "day": pl.Series([dt.date(2024, 1, 1), None], dtype=pl.Date),
            "at_paris": paris.dt.replace_time_zone("Europe/Paris", ambiguous="earliest"),
            "at_kolkata_ms": pl.Series(
                [dt.datetime(2024, 3, 31, 1, 30), None], dtype=pl.Datetime("ms", "Asia/Kolkata")
            ),
            "at_utc": pl.Series(
                [dt.datetime(2024, 1, 1, 23, 59, 59, 999999), None], dtype=pl.Datetime("us", "UTC")
            ),
            "naive": pl.Series([dt.datetime(2024, 3, 31, 2, 30, 0, 123456), None]),
            "naive_ns": pl.Series([dt.datetime(2024, 3, 31, 2, 30), None], dtype=pl.Datetime("ns")),
            "count": pl.Series([1, None], dtype=pl.Int64),
            "small": pl.Series([-128, None], dtype=pl.Int8),
            "u8": pl.Series([255, 0], dtype=pl.UInt8),
            "u64": pl.Series([2**64 - 1, None], dtype=pl.UInt64),
            "price": pl.Series([decimal.Decimal("12345678.25"), None], dtype=pl.Decimal(10, 2)),
            "share": pl.Series([0.5, None], dtype=pl.Float32),
            "tags": pl.Series([["a", "b"], None], dtype=pl.List(pl.String)),
            "point": pl.Series(
                [{"x": 1.5, "y": 2}, None], dtype=pl.Struct({"x": pl.Float64, "y": pl.Int32})
            ),
            "nothing": pl.Series([None, None], dtype=pl.Null),
            "no_text": pl.Series([None, None], dtype=pl.String),
            "hazard": pl.Series(["flood", "storm"], dtype=pl.Enum(["flood", "storm", "drought"])),
            "station": pl.Series(["Seattle", None], dtype=pl.Categorical),
            "checked": pl.Series([True, None], dtype=pl.Boolean),
            "lasted": pl.Series([dt.timedelta(days=2, microseconds=5), None]),
            "lasted_ms": pl.Series([dt.timedelta(seconds=90), None], dtype=pl.Duration("ms")),
            "lasted_ns": pl.Series([dt.timedelta(seconds=-90), None], dtype=pl.Duration("ns")),
            "clock": pl.Series([dt.time(23, 59, 59, 999999), None], dtype=pl.Time),
            "payload": pl.Series([b"\x00\x01", None], dtype=pl.Binary),
        }
    )


@functools.cache
def dagster_instance() -> dg.DagsterInstance:
    """Return one instance for every context built here: a context builds its own otherwise."""
    return dg.DagsterInstance.ephemeral()


def write(manager: DuckDBPolarsIOManager, frame: pl.DataFrame, key=READINGS, **metadata) -> None:
    with dg.build_resources({}, instance=dagster_instance()) as resources:
        context = dg.build_output_context(
            asset_key=key, definition_metadata=metadata, resources=resources
        )
        manager.handle_output(context, frame)


def read(manager: DuckDBPolarsIOManager, key=READINGS, **metadata) -> pl.DataFrame:
    with dg.build_resources({}, instance=dagster_instance()) as resources:
        upstream = dg.build_output_context(asset_key=key, resources=resources)
        context = dg.build_input_context(
            asset_key=key,
            upstream_output=upstream,
            definition_metadata=metadata,
            instance=dagster_instance(),
        )
        return manager.load_input(context)


def query(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def column_types(path: Path, table: str) -> dict[str, str]:
    return {row[0]: row[1] for row in query(path, f"DESCRIBE {table}")}


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a Python process that runs `code` with the project importable."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Types


@pytest.mark.parametrize("zone", ZONES)
def test_round_trip_keeps_dtypes(manager, local_zone, zone):
    local_zone(zone)
    frame = typed_frame()

    write(manager, frame)

    assert_frame_equal(read(manager), frame)


def test_round_trip_across_processes(manager, path, tmp_path, local_zone):
    frame = typed_frame()
    frame.write_ipc(tmp_path / "frame.arrow")
    writer = run_python(
        f"""
        import dagster as dg, polars as pl
        from portal.warehouse import DuckDBPolarsIOManager
        frame = pl.read_ipc({str(tmp_path / "frame.arrow")!r})
        manager = DuckDBPolarsIOManager(connection={str(path)!r})
        with dg.build_resources({{}}) as resources:
            context = dg.build_output_context(asset_key=["raw", "readings"], resources=resources)
            manager.handle_output(context, frame)
        """,
        env={"TZ": "Pacific/Chatham"},
    )
    _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors

    local_zone("America/St_Johns")

    assert_frame_equal(read(manager), frame)


def test_round_trip_selects_columns(manager):
    frame = typed_frame()
    write(manager, frame)

    assert_frame_equal(read(manager, columns=["hazard"]), frame.select("hazard"))


def test_write_rejects_non_frame(manager):
    with pytest.raises(TypeError, match="raw/readings returned dict"):
        write(manager, {"station": ["Seattle"]})


def test_write_skips_none(manager, path):
    write(manager, None)

    assert not path.exists()


# Replacing a table


def test_failed_asset_keeps_table(path):
    resources = {"warehouse": DuckDBPolarsIOManager(connection=str(path))}

    @dg.asset(key=["raw", "readings"], io_manager_key="warehouse")
    def first() -> pl.DataFrame:
        return pl.DataFrame({"station": ["Seattle", "Boston"], "rain": [1.5, 0.0]})

    @dg.asset(key=["raw", "readings"], io_manager_key="warehouse")
    def broken() -> pl.DataFrame:
        raise RuntimeError("source unreachable")

    dg.materialize([first], resources=resources)
    result = dg.materialize([broken], resources=resources, raise_on_error=False)

    assert not result.success
    assert query(path, "SELECT * FROM raw.readings ORDER BY station") == [
        ("Boston", 0.0),
        ("Seattle", 1.5),
    ]


@pytest.mark.parametrize("step", ["record_schema", "comment_on"])
def test_failed_write_keeps_table(manager, path, monkeypatch, step):
    old = pl.DataFrame({"station": ["Seattle"], "rain": pl.Series([1.5], dtype=pl.Float32)})
    write(manager, old)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(warehouse, step, fail)
    with pytest.raises(OSError, match="disk full"):
        write(manager, pl.DataFrame({"city": ["Boston", "Denver"], "rain": ["wet", "dry"]}))
    monkeypatch.undo()

    assert column_types(path, "raw.readings") == {"station": "VARCHAR", "rain": "FLOAT"}
    assert query(path, "SELECT * FROM raw.readings") == [("Seattle", 1.5)]
    assert_frame_equal(read(manager), old)


SCHEMA_CHANGES = {
    "added": pl.DataFrame({"station": ["Boston"], "rain": [2.5], "snow": [1]}),
    "removed": pl.DataFrame({"station": ["Boston"]}),
    "retyped": pl.DataFrame({"station": ["Boston"], "rain": ["heavy"]}),
    "reordered": pl.DataFrame({"rain": [2.5], "station": ["Boston"]}),
    "renamed": pl.DataFrame({"place": ["Boston"], "rain": [2.5]}),
}


@pytest.mark.parametrize("change", SCHEMA_CHANGES)
def test_schema_change_replaces_table(manager, path, change):
    write(manager, pl.DataFrame({"station": ["Seattle", "Denver"], "rain": [1.5, 0.0]}))
    new = SCHEMA_CHANGES[change]

    write(manager, new)

    assert list(column_types(path, "raw.readings")) == new.columns
    assert_frame_equal(read(manager), new)


# Partitions

STATIONS = dg.StaticPartitionsDefinition(["seattle", "boston", "denver"])
DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-10")


def station_asset(rain: float, extra_row: bool = False) -> dg.AssetsDefinition:
    @dg.asset(
        key=["raw", "readings"],
        partitions_def=STATIONS,
        io_manager_key="warehouse",
        metadata={"partition_expr": "station"},
    )
    def readings(context: dg.AssetExecutionContext) -> pl.DataFrame:
        stations = [context.partition_key] * 2 + (["denver"] if extra_row else [])
        return pl.DataFrame({"station": stations, "rain": [rain] * len(stations)})

    return readings


def day_asset(
    hours: list[int],
    zone: str | None = "UTC",
    days: dg.DailyPartitionsDefinition = DAYS,
    unit: str = "us",
) -> dg.AssetsDefinition:
    """Return a daily asset with a row at each of `hours` of the partition's day.

    The hours are wall-clock time in the partitions' zone; column `observed` holds them in
    `zone`, or as naive wall-clock time when `zone` is None.
    """

    @dg.asset(
        key=["raw", "readings"],
        partitions_def=days,
        io_manager_key="warehouse",
        metadata={"partition_expr": "observed"},
    )
    def readings(context: dg.AssetExecutionContext) -> pl.DataFrame:
        day = dt.datetime.fromisoformat(context.partition_key)
        wall = pl.Series([day + dt.timedelta(hours=hour) for hour in hours]).dt.cast_time_unit(unit)
        observed = wall.dt.replace_time_zone(days.timezone)
        if zone is None:
            observed = observed.dt.replace_time_zone(None)
        else:
            observed = observed.dt.convert_time_zone(zone)
        return pl.DataFrame(
            {
                "observed": observed,
                "day": pl.Series([day.date()] * len(hours)),
                "key": [context.partition_key] * len(hours),
                "hour": hours,
            }
        )

    return readings


def materialize(
    path: Path, assets: list, partition_key: str, **kwargs
) -> dg.ExecuteInProcessResult:
    manager = DuckDBPolarsIOManager(connection=str(path), lock_timeout=10)
    return dg.materialize(
        assets, resources={"warehouse": manager}, partition_key=partition_key, **kwargs
    )


def test_static_partition_replaces_own_rows(path):
    materialize(path, [station_asset(1.0)], "seattle")
    materialize(path, [station_asset(2.0)], "boston")

    materialize(path, [station_asset(3.0)], "seattle")
    materialize(path, [station_asset(4.0)], "seattle")

    rows = query(path, "SELECT station, rain, count(*) FROM raw.readings GROUP BY ALL ORDER BY 1")
    assert rows == [("boston", 2.0, 2), ("seattle", 4.0, 2)]


def test_static_partition_rejects_outside_rows(path):
    materialize(path, [station_asset(1.0)], "seattle")

    with pytest.raises(ValueError, match=r"1 rows have a 'station' outside partition \['boston'\]"):
        materialize(path, [station_asset(2.0, extra_row=True)], "boston")

    assert query(path, "SELECT station, rain FROM raw.readings") == [("seattle", 1.0)] * 2


def test_partition_without_expr_fails(path):
    @dg.asset(key=["raw", "readings"], partitions_def=STATIONS, io_manager_key="warehouse")
    def readings() -> pl.DataFrame:
        return pl.DataFrame({"station": ["seattle"]})

    with pytest.raises(ValueError, match="declares no 'partition_expr' metadata"):
        materialize(path, [readings], "seattle")


@pytest.mark.parametrize(
    ("partition_zone", "zone", "unit"),
    [
        ("UTC", "UTC", "us"),
        ("America/New_York", "America/New_York", "us"),
        ("America/New_York", None, "us"),
        ("Asia/Kolkata", "UTC", "ms"),
        ("Asia/Kolkata", "Asia/Kolkata", "ns"),
        ("America/New_York", None, "ns"),
    ],
)
def test_daily_partition_replaces_own_rows(path, partition_zone, zone, unit):
    days = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone=partition_zone)
    materialize(path, [day_asset([0, 12], zone, days, unit)], "2024-01-02")
    materialize(path, [day_asset([0, 12], zone, days, unit)], "2024-01-03")

    materialize(path, [day_asset([6, 18, 23], zone, days, unit)], "2024-01-02")
    materialize(path, [day_asset([6, 18, 23], zone, days, unit)], "2024-01-02")

    rows = query(
        path, "SELECT day, list(hour ORDER BY hour) FROM raw.readings GROUP BY 1 ORDER BY 1"
    )
    assert rows == [(dt.date(2024, 1, 2), [6, 18, 23]), (dt.date(2024, 1, 3), [0, 12])]


def test_daily_partition_rejects_next_day(path):
    with pytest.raises(ValueError, match=r"1 rows have a 'observed' outside partition"):
        materialize(path, [day_asset([0, 24])], "2024-01-02")


@pytest.mark.parametrize("column", ["day", "key"])
def test_daily_partition_by_other_column(path, column):
    asset = day_asset([0, 23])
    dated = asset.with_attributes(metadata_by_key={asset.key: {"partition_expr": column}})
    materialize(path, [dated], "2024-01-02")
    materialize(path, [dated], "2024-01-03")

    materialize(path, [dated], "2024-01-02")

    rows = query(path, "SELECT day, count(*) FROM raw.readings GROUP BY 1 ORDER BY 1")
    assert rows == [(dt.date(2024, 1, 2), 2), (dt.date(2024, 1, 3), 2)]


def test_partition_load_reads_own_rows(path):
    loaded: dict[str, pl.DataFrame] = {}

    @dg.asset(partitions_def=DAYS, ins={"readings": dg.AssetIn(key=["raw", "readings"])})
    def daily_hours(context: dg.AssetExecutionContext, readings: pl.DataFrame) -> None:
        loaded[context.partition_key] = readings

    writer = day_asset([0, 23], "Asia/Tokyo")
    materialize(path, [writer], "2024-01-02")
    materialize(path, [writer], "2024-01-03")
    materialize(path, [writer], "2024-01-04")
    materialize(path, [writer.to_source_asset(), daily_hours], "2024-01-03")

    readings = loaded["2024-01-03"]
    assert readings.schema["observed"] == pl.Datetime("us", "Asia/Tokyo")
    assert readings["day"].to_list() == [dt.date(2024, 1, 3)] * 2
    assert readings["hour"].to_list() == [0, 23]


def test_unpartitioned_load_reads_all_rows(path):
    loaded: list[pl.DataFrame] = []

    @dg.asset(ins={"readings": dg.AssetIn(key=["raw", "readings"])})
    def all_hours(readings: pl.DataFrame) -> None:
        loaded.append(readings)

    writer = day_asset([0, 23])
    materialize(path, [writer], "2024-01-02")
    materialize(path, [writer], "2024-01-05")
    manager = DuckDBPolarsIOManager(connection=str(path))
    dg.materialize([writer.to_source_asset(), all_hours], resources={"warehouse": manager})

    assert loaded[0]["day"].unique().sort().to_list() == [dt.date(2024, 1, 2), dt.date(2024, 1, 5)]
    assert loaded[0].height == 4


def test_partition_schema_change_keeps_other_rows(path):
    @dg.asset(
        key=["raw", "readings"],
        partitions_def=STATIONS,
        io_manager_key="warehouse",
        metadata={"partition_expr": "station"},
    )
    def readings(context: dg.AssetExecutionContext) -> pl.DataFrame:
        if context.partition_key == "seattle":
            return pl.DataFrame({"station": ["seattle"], "rain": pl.Series([1], dtype=pl.Int32)})
        return pl.DataFrame({"station": ["boston"], "rain": [2.5], "snow": [True]})

    materialize(path, [readings], "seattle")
    materialize(path, [readings], "boston")
    frame = read(DuckDBPolarsIOManager(connection=str(path)))

    expected = pl.DataFrame(
        {"station": ["boston", "seattle"], "rain": [2.5, 1.0], "snow": [True, None]}
    )
    assert_frame_equal(frame.sort("station"), expected)


# Connections and locks


def test_file_released_after_run(path):
    materialize(path, [station_asset(1.0)], "seattle")

    opener = run_python(
        f"""
        import duckdb
        duckdb.connect({str(path)!r}).execute("DELETE FROM raw.readings")
        """
    )
    _, errors = opener.communicate(timeout=60)

    assert opener.returncode == 0, errors


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Start a process that keeps the file open for `seconds`; return once it holds the lock."""
    holder = run_python(
        f"""
        import duckdb, time
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
        """
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_past_timeout_names_holder(path):
    holder = hold_lock(path, 30)
    manager = DuckDBPolarsIOManager(connection=str(path), lock_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(WarehouseLocked) as raised:
            write(manager, pl.DataFrame({"station": ["seattle"]}))
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()

    assert str(path) in str(raised.value)
    assert f"PID {holder.pid}" in str(raised.value)
    # It gave up while the holder still held the lock (30 s), after waiting the timeout.
    assert 0.4 < waited < 25


def test_lock_within_timeout_waits(manager, path):
    holder = hold_lock(path, 1.5)

    started = time.monotonic()
    write(manager, pl.DataFrame({"station": ["seattle"]}))
    waited = time.monotonic() - started
    holder.wait(timeout=30)

    assert waited > 1.0
    assert query(path, "SELECT station FROM raw.readings") == [("seattle",)]


def test_parallel_processes_all_write(path):
    writers = [
        run_python(
            f"""
            import dagster as dg, polars as pl
            from portal.warehouse import DuckDBPolarsIOManager
            manager = DuckDBPolarsIOManager(connection={str(path)!r}, lock_timeout=60)
            with dg.build_resources({{}}) as resources:
                for table in range(5):
                    frame = pl.DataFrame({{"writer": [{writer}] * 100, "table": [table] * 100}})
                    key = ["writer_{writer}", f"table_{{table}}"]
                    context = dg.build_output_context(asset_key=key, resources=resources)
                    manager.handle_output(context, frame)
            """
        )
        for writer in range(3)
    ]
    for process in writers:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors

    tables = query(path, "SELECT schema_name, table_name, estimated_size FROM duckdb_tables()")
    written = sorted((schema, name) for schema, name, _ in tables if schema != "_portal")
    assert written == sorted(
        (f"writer_{writer}", f"table_{table}") for writer in range(3) for table in range(5)
    )


def multiprocess_job(connection: str) -> dg.JobDefinition:
    """Build a job of four parallel assets and one that joins them, for the step processes."""
    manager = DuckDBPolarsIOManager(connection=connection, lock_timeout=60)
    names = ["seattle", "boston", "denver", "miami"]

    def station_table(name: str) -> dg.AssetsDefinition:
        @dg.asset(name=name, key_prefix="raw", io_manager_key="warehouse")
        def station() -> pl.DataFrame:
            return pl.DataFrame({"station": [name] * 1000, "rain": range(1000)})

        return station

    @dg.asset(
        ins={name: dg.AssetIn(key=["raw", name]) for name in names}, io_manager_key="warehouse"
    )
    def rain_totals(**stations: pl.DataFrame) -> pl.DataFrame:
        return pl.concat(stations.values()).group_by("station").agg(pl.col("rain").sum())

    definitions = dg.Definitions(
        assets=[*(station_table(name) for name in names), rain_totals],
        resources={"warehouse": manager},
        jobs=[dg.define_asset_job("all_tables", executor_def=dg.multiprocess_executor)],
    )
    return definitions.resolve_job_def("all_tables")


@pytest.mark.slow
def test_multiprocess_job_shares_file(path, tmp_path):
    # Step processes import this module the way pytest did: as `test_warehouse` from this
    # folder, or as `portal_tests.test_warehouse` from the project root.
    importable_from = Path(__file__).parents[__name__.count(".")]
    job = dg.build_reconstructable_job(
        __name__,
        "multiprocess_job",
        (str(path),),
        reconstructor_working_directory=str(importable_from),
    )
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.execute_job(
            job, instance=instance, run_config={"execution": {"config": {"max_concurrent": 4}}}
        )

    assert result.success
    assert query(path, "SELECT count(*) FROM main.rain_totals") == [(4,)]
    assert query(path, "SELECT sum(rain) FROM main.rain_totals") == [(4 * 499500,)]


# Names and metadata


def test_file_named_like_schema(tmp_path):
    manager = DuckDBPolarsIOManager(connection=str(tmp_path / "raw.duckdb"))
    frame = pl.DataFrame({"station": ["seattle"], "rain": [1.5]})

    write(manager, frame, table_comment="Rain gauges.")
    write(manager, frame, table_comment="Rain gauges.")

    assert_frame_equal(read(manager), frame)


def test_missing_table_names_table(manager, path):
    write(manager, pl.DataFrame({"station": ["seattle"]}))

    with pytest.raises(TableNotFound) as raised:
        read(manager, dg.AssetKey(["raw", "earthquakes"]))

    assert "table raw.earthquakes is not in warehouse" in str(raised.value)
    assert str(path) in str(raised.value)
    assert "materialize raw/earthquakes first" in str(raised.value)


def test_missing_file_names_table(manager, path):
    with pytest.raises(TableNotFound, match="materialize raw/readings first"):
        read(manager)

    assert not path.exists()


def test_comments_from_metadata(manager, path):
    columns = dg.TableSchema(
        columns=[
            dg.TableColumn("station", "string", description="Station's city"),
            dg.TableColumn("rain", "float", description="Rain in mm"),
            dg.TableColumn("retired", "bool", description="Not in this table"),
        ]
    )
    frame = pl.DataFrame({"station": ["seattle"], "rain": [1.5]})

    write(manager, frame, table_comment="Daily rain", **{"dagster/column_schema": columns})

    tables = query(path, "SELECT comment FROM duckdb_tables() WHERE table_name = 'readings'")
    comments = query(
        path,
        "SELECT column_name, comment FROM duckdb_columns() "
        "WHERE table_name = 'readings' ORDER BY column_index",
    )
    assert tables == [("Daily rain",)]
    assert comments == [("station", "Station's city"), ("rain", "Rain in mm")]
