"""Raw assets end to end: live downloads from a local server, the snapshot fallback, and runs
that rebuild nothing downstream when the upstream file did not change."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from portal.assets import WAREHOUSE, dataset_asset, raw_asset
from portal.changes import data_version
from portal.dataset import Column, Dataset, Origin, Source
from portal.fetch import fetch, sha256_of
from portal.settings import PROJECT_ROOT, Settings
from portal.warehouse import DuckDBPolarsIOManager
from portal_tests.flaky_server import FlakyServer, Reply

ORIGIN = Origin("Test producer", "cc0-1.0", "CC0 1.0", "https://example.org/licence")
READINGS = b"station,reading\nalpha,1\nbeta,2\n"
LEVELS = b"station,level\nalpha,10\nbeta,20\n"

readings_source = Source(
    name="readings",
    url="https://example.org/readings.csv",
    format="csv",
    origin=ORIGIN,
    schema={"station": pl.String, "reading": pl.Int64},
)
levels_source = Source(
    name="levels",
    url="https://example.org/levels.csv",
    format="csv",
    origin=ORIGIN,
    schema={"station": pl.String, "level": pl.Int64},
)
readings = Dataset(
    name="readings",
    title="Readings",
    description="Readings by station.",
    inputs=[readings_source],
    columns=[Column("station", pl.String, "Station"), Column("reading", pl.Int64, "Reading")],
    build=lambda readings: readings,
)
levels = Dataset(
    name="levels",
    title="Levels",
    description="Levels by station.",
    inputs=[levels_source],
    columns=[Column("station", pl.String, "Station"), Column("level", pl.Int64, "Level")],
    build=lambda levels: levels,
)
summary = Dataset(
    name="summary",
    title="Summary",
    description="Readings and levels side by side.",
    inputs=["readings", "levels"],
    columns=[
        Column("station", pl.String, "Station"),
        Column("reading", pl.Int64, "Reading"),
        Column("level", pl.Int64, "Level"),
    ],
    build=lambda readings, levels: readings.join(levels, on="station"),
)


@pytest.fixture
def server():
    with FlakyServer() as running:
        yield running


@pytest.fixture
def portal_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FlakyServer) -> Path:
    data = tmp_path / "data"
    variables = {
        "PORTAL_DATA_DIR": str(data),
        "PORTAL_SNAPSHOT_DIR": str(data / "snapshots"),
        "PORTAL_WAREHOUSE": str(data / "warehouse.duckdb"),
        "PORTAL_PUBLISH_DIR": str(data / "publish"),
        "PORTAL_OFFLINE": "0",
        "PORTAL_HOST_PAUSE": "0",
        "PORTAL_FETCH_RETRIES": "1",
        "PORTAL_RETRY_BACKOFF": "0.01",
        "PORTAL_RETRY_MAX_WAIT": "0.2",
        "PORTAL_FETCH_TIMEOUT": "1",
        "PORTAL_READINGS_URL": server.url("/readings.csv"),
        "PORTAL_LEVELS_URL": server.url("/levels.csv"),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return data


def run(data: Path, instance: dg.DagsterInstance, *datasets: Dataset, selection=None):
    sources = {source.name: source for dataset in datasets for source in dataset.sources}
    assets = [raw_asset(source) for source in sources.values()]
    assets += [dataset_asset(dataset) for dataset in datasets]
    warehouse = DuckDBPolarsIOManager(connection=str(data / "warehouse.duckdb"), lock_timeout=5)
    return dg.materialize(
        assets, instance=instance, resources={WAREHOUSE: warehouse}, selection=selection
    )


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def skipped(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.step_key for event in result.all_events if event.is_step_skipped}


def raw_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    """Metadata of the raw asset's materialization, or of its observation when unchanged."""
    for event in result.all_events:
        if event.is_step_materialization or event.event_type_value == "ASSET_OBSERVATION":
            record = event.event_specific_data
            inner = getattr(record, "materialization", None) or record.asset_observation
            if inner.asset_key == dg.AssetKey(["raw", name]):
                return {key: value.value for key, value in inner.metadata.items()}
    raise AssertionError(f"raw/{name} recorded nothing")


def table(data: Path, name: str) -> pl.DataFrame:
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        return pl.from_arrow(con.sql(f"SELECT * FROM {name} ORDER BY station").to_arrow_table())


def test_live_run_builds_tables(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS, etag='"r1"'))
    result = run(portal_env, dg.DagsterInstance.ephemeral(), readings)
    metadata = raw_metadata(result, "readings")
    versions = result.get_asset_materialization_events()
    assert materialized(result) == {"raw/readings", "readings"}
    assert metadata["used"] == "live"
    assert metadata["reason"] == "changed"
    assert versions[0].materialization.tags["dagster/data_version"] == data_version(
        fetch(readings_source, Settings.from_env())
    )
    assert metadata["sha256"] == sha256_of(portal_env / "snapshots" / "readings" / "readings.csv")
    assert table(portal_env, "readings")["reading"].to_list() == [1, 2]
    assert table(portal_env, "raw.readings")["reading"].to_list() == [1, 2]


def test_unchanged_run_skips_downstream(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS, etag='"r1"'))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)

    second = run(portal_env, instance, readings)
    metadata = raw_metadata(second, "readings")
    assert server.bodies_sent["/readings.csv"] == 1
    assert materialized(second) == set()
    assert skipped(second) == {"readings"}
    assert metadata["unchanged"] is True
    assert "304" in metadata["reason"]
    assert table(portal_env, "readings")["reading"].to_list() == [1, 2]


def test_changed_run_rebuilds(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)
    server.plan("/readings.csv", Reply(READINGS + b"gamma,3\n"))

    second = run(portal_env, instance, readings)
    assert materialized(second) == {"raw/readings", "readings"}
    assert table(portal_env, "readings")["reading"].to_list() == [1, 2, 3]


def test_join_rebuilds_when_one_side_changes(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS, etag='"r1"'))
    server.plan("/levels.csv", Reply(LEVELS, etag='"l1"'))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings, levels, summary)
    server.plan("/levels.csv", Reply(b"station,level\nalpha,11\nbeta,21\n", etag='"l2"'))

    second = run(portal_env, instance, readings, levels, summary)
    assert "summary" in materialized(second)
    assert "readings" in materialized(second)
    assert table(portal_env, "summary")["level"].to_list() == [11, 21]
    assert server.bodies_sent["/readings.csv"] == 1

    third = run(portal_env, instance, readings, levels, summary)
    assert materialized(third) == set()


def test_failed_step_is_retried_next_run(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS, etag='"r1"'))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings, selection=[dg.AssetKey(["raw", "readings"])])

    second = run(portal_env, instance, readings)
    assert materialized(second) == {"raw/readings", "readings"}
    assert "missing" in raw_metadata(second, "readings")["rebuilt_because"]


def test_bad_download_keeps_tables(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)
    snapshot = portal_env / "snapshots" / "readings" / "readings.csv"
    server.plan(
        "/readings.csv", Reply(b"<html><body>Error</body></html>", content_type="text/html")
    )

    second = run(portal_env, instance, readings)
    metadata = raw_metadata(second, "readings")
    assert metadata["used"] == "snapshot"
    assert "HTML page" in metadata["reason"]
    assert server.url("/readings.csv") in metadata["reason"]
    assert materialized(second) == set()
    assert snapshot.read_bytes() == READINGS
    assert table(portal_env, "readings")["reading"].to_list() == [1, 2]


def test_offline_run_uses_snapshot(server, portal_env, monkeypatch):
    server.plan("/readings.csv", Reply(READINGS))
    run(portal_env, dg.DagsterInstance.ephemeral(), readings)
    monkeypatch.setenv("PORTAL_OFFLINE", "1")

    second = run(portal_env, dg.DagsterInstance.ephemeral(), readings)
    metadata = raw_metadata(second, "readings")
    assert metadata["used"] == "snapshot"
    assert "PORTAL_OFFLINE" in metadata["reason"]
    assert materialized(second) == {"raw/readings", "readings"}
    assert len(server.requests_to("/readings.csv")) == 1


def test_unreachable_run_uses_snapshot(server, portal_env, monkeypatch):
    server.plan("/readings.csv", Reply(READINGS))
    run(portal_env, dg.DagsterInstance.ephemeral(), readings)
    monkeypatch.setenv("PORTAL_READINGS_URL", "http://portal-test-host.invalid/readings.csv")

    second = run(portal_env, dg.DagsterInstance.ephemeral(), readings)
    metadata = raw_metadata(second, "readings")
    assert metadata["used"] == "snapshot"
    assert "portal-test-host.invalid" in metadata["reason"]
    assert "could not be resolved" in metadata["reason"]
    assert table(portal_env, "readings")["reading"].to_list() == [1, 2]


def test_edited_snapshot_rebuilds_offline(server, portal_env, monkeypatch):
    server.plan("/readings.csv", Reply(READINGS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)
    monkeypatch.setenv("PORTAL_OFFLINE", "1")
    snapshot = portal_env / "snapshots" / "readings" / "readings.csv"
    snapshot.write_bytes(READINGS + b"gamma,3\n")

    second = run(portal_env, instance, readings)
    assert materialized(second) == {"raw/readings", "readings"}
    assert table(portal_env, "readings")["reading"].to_list() == [1, 2, 3]


def test_new_origin_record_rebuilds(server, portal_env, monkeypatch):
    server.plan("/readings.csv", Reply(READINGS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)
    monkeypatch.setenv("PORTAL_OFFLINE", "1")
    origin = portal_env / "snapshots" / "readings" / "origin.json"
    origin.write_text(origin.read_text().replace('"producer": "Test', '"producer": "Renamed'))

    second = run(portal_env, instance, readings)
    assert materialized(second) == {"raw/readings", "readings"}


def test_unavailable_sibling_fails_alone(server, portal_env, monkeypatch):
    server.plan("/readings.csv", Reply(READINGS, etag='"r1"'))
    server.plan("/levels.csv", Reply(LEVELS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings, levels, summary)
    shutil.rmtree(portal_env / "snapshots" / "levels")
    monkeypatch.setenv("PORTAL_LEVELS_URL", "http://portal-test-host.invalid/levels.csv")

    warehouse = DuckDBPolarsIOManager(connection=str(portal_env / "warehouse.duckdb"))
    second = dg.materialize(
        [raw_asset(readings_source), raw_asset(levels_source)]
        + [dataset_asset(dataset) for dataset in (readings, levels, summary)],
        instance=instance,
        resources={WAREHOUSE: warehouse},
        raise_on_error=False,
    )
    failed = {event.step_key for event in second.all_events if event.is_step_failure}
    assert failed == {"raw__levels"}
    assert "raw/readings" in materialized(second)


def fallback_levels(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[int]:
    """Levels of the run's log lines that announce the use of the stored snapshot."""
    return [
        entry.level
        for entry in instance.all_logs(result.run_id)
        if "Using the snapshot retrieved" in entry.user_message
    ]


def test_offline_run_logs_info(server, portal_env, monkeypatch):
    server.plan("/readings.csv", Reply(READINGS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)
    monkeypatch.setenv("PORTAL_OFFLINE", "1")

    second = run(portal_env, instance, readings)
    assert fallback_levels(instance, second) == [logging.INFO]


def test_failed_download_logs_warning(server, portal_env):
    server.plan("/readings.csv", Reply(READINGS))
    instance = dg.DagsterInstance.ephemeral()
    run(portal_env, instance, readings)
    server.plan("/readings.csv", Reply(status=404))

    second = run(portal_env, instance, readings)
    assert fallback_levels(instance, second) == [logging.WARNING]


def test_retry_reaches_run_log(server, portal_env, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_instance.yaml", home / "dagster.yaml")
    server.plan("/readings.csv", Reply(status=503), Reply(READINGS))

    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = run(portal_env, instance, readings)
        retries = [
            entry
            for entry in instance.all_logs(result.run_id)
            if "retrying in" in entry.user_message
        ]
    assert len(retries) == 1
    assert "HTTP 503" in retries[0].user_message
    assert retries[0].level == logging.WARNING
    assert retries[0].step_key == "raw__readings"
