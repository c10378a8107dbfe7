"""The whole asset graph run end to end on the committed snapshots, offline, in temp folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from polars.testing import assert_frame_equal

from portal.assets import WAREHOUSE
from portal.dataset import Dataset
from portal.datasets import load_datasets
from portal.definitions import build_definitions
from portal.settings import PROJECT_ROOT, Settings

# Every year of the CO2 (1958-2020) and disasters (1900-2017) files lies within the temperature
# file's 1880-2023, which has no gaps (awk over the snapshots).
CLIMATE_YEARS = 144

PUBLISHED = [dataset.name for dataset in load_datasets() if dataset.publish]


@dataclass(frozen=True)
class PortalRun:
    settings: Settings
    defs: dg.Definitions
    result: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def portal_run(
    tmp_path_factory: pytest.TempPathFactory,
    prepare_offline_portal: Callable[[Path], dict[str, str]],
):
    """Execute the `materialize_all` job in process once for every test of this module."""
    data_dir = tmp_path_factory.mktemp("portal") / "data"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, value in prepare_offline_portal(data_dir).items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env()
        defs = build_definitions(settings)
        job = defs.resolve_job_def("materialize_all")
        result = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
        )
        yield PortalRun(settings, defs, result)


@pytest.fixture(scope="module")
def datasets() -> dict[str, Dataset]:
    return {dataset.name: dataset for dataset in load_datasets()}


def warehouse_tables(connection: str) -> dict[str, int]:
    """Return the row count of every table in schemas `raw` and `main`, keyed `schema.table`."""
    with duckdb.connect(connection, read_only=True) as con:
        names = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('raw', 'main')"
        ).fetchall()
        return {
            f"{schema}.{table}": con.execute(f'SELECT count(*) FROM {schema}."{table}"').fetchone()[
                0
            ]
            for schema, table in names
        }


def expected_tables(datasets: dict[str, Dataset], snapshot_rows: dict[str, int]) -> dict[str, int]:
    expected = {}
    for name, rows in snapshot_rows.items():
        expected[f"raw.{name}"] = rows
        expected[f"main.{name}"] = rows
    expected["main.climate_by_year"] = CLIMATE_YEARS
    assert {key.removeprefix("main.") for key in expected if key.startswith("main.")} == set(
        datasets
    )
    return expected


def failed_steps(result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        f"{event.step_key}: {event.event_specific_data.error.message.strip()}"
        for event in result.all_events
        if event.is_step_failure
    ]


def test_run_succeeds(portal_run):
    assert failed_steps(portal_run.result) == []
    assert portal_run.result.success


def test_run_materializes_every_asset(portal_run):
    materialized = {
        event.asset_key for event in portal_run.result.get_asset_materialization_events()
    }
    assert materialized == set(portal_run.defs.resolve_all_asset_keys())


def test_tables_describe_themselves(portal_run):
    tables = [
        event.materialization
        for event in portal_run.result.get_asset_materialization_events()
        if event.asset_key.path[0] != "publish"
    ]
    table_keys = {
        key for key in portal_run.defs.resolve_all_asset_keys() if key.path[0] != "publish"
    }
    assert {materialization.asset_key for materialization in tables} == table_keys
    for materialization in tables:
        metadata = materialization.metadata
        key = materialization.asset_key.to_user_string()
        assert metadata["dagster/row_count"].value > 0, key
        assert metadata["columns"].value > 0, key
        assert "|" in metadata["preview"].value, key
        assert "| column | nulls |" in metadata["null_counts"].value, key


def test_run_error_checks_pass(portal_run):
    evaluations = portal_run.result.get_asset_check_evaluations()
    # Warnings are allowed: a freshness check warns about an old committed snapshot.
    failed = [
        f"{evaluation.asset_key.to_user_string()}: {evaluation.check_name}"
        for evaluation in evaluations
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert evaluations
    assert failed == []


def test_warehouse_row_counts(portal_run, datasets, snapshot_rows):
    tables = warehouse_tables(portal_run.settings.warehouse)
    assert tables == expected_tables(datasets, snapshot_rows)


def test_publish_folder_lists_datasets(portal_run, datasets):
    published = {name for name, dataset in datasets.items() if dataset.publish}
    entries = {path.name for path in portal_run.settings.publish_dir.iterdir()}
    # Hidden staging or retired folders left behind would show up here too.
    assert entries == published


@pytest.mark.parametrize("name", PUBLISHED)
def test_release_files(portal_run, name):
    release = portal_run.settings.publish_dir / name
    parquet_files = sorted(path.name for path in release.glob("*.parquet"))
    assert parquet_files == [f"{name}.parquet"]
    assert (release / "README.md").is_file()


@pytest.mark.parametrize("name", PUBLISHED)
def test_release_folder_readable(portal_run, name):
    umask = os.umask(0)
    os.umask(umask)
    mode = (portal_run.settings.publish_dir / name).stat().st_mode & 0o777

    assert mode == 0o777 & ~umask


@pytest.mark.parametrize("name", PUBLISHED)
def test_release_parquet_is_zstd(portal_run, name):
    metadata = pq.ParquetFile(portal_run.settings.publish_dir / name / f"{name}.parquet").metadata
    codecs = {
        metadata.row_group(group).column(column).compression
        for group in range(metadata.num_row_groups)
        for column in range(metadata.num_columns)
    }
    assert metadata.num_row_groups >= 1
    assert codecs == {"ZSTD"}


@pytest.mark.parametrize("name", PUBLISHED)
def test_release_equals_warehouse(portal_run, datasets, name):
    dataset = datasets[name]
    published = pl.read_parquet(portal_run.settings.publish_dir / name / f"{name}.parquet")
    with duckdb.connect(portal_run.settings.warehouse, read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        stored = pl.from_arrow(con.sql(f'SELECT * FROM main."{name}"').to_arrow_table())

    assert published.schema == dataset.schema
    key = list(dataset.key)
    assert_frame_equal(published.sort(key), stored.cast(dataset.schema).sort(key))


@pytest.mark.parametrize("name", PUBLISHED)
def test_release_card(portal_run, datasets, name):
    card = DatasetCard.load(portal_run.settings.publish_dir / name / "README.md")
    assert card.data.pretty_name == datasets[name].title
    assert f"{name}.parquet" in card.text


def test_card_shows_data_age(portal_run):
    card = DatasetCard.load(portal_run.settings.publish_dir / "earthquakes" / "README.md")

    # The committed earthquake snapshot is a 2018 capture retrieved much later.
    assert "data as of 2018-02-07T01:49:14+00:00" in card.text


def test_defs_load():
    import portal.definitions

    dg.Definitions.validate_loadable(portal.definitions.defs)


def test_defs_load_offline(offline_portal):
    defs = build_definitions(offline_portal)
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("materialize_all")

    assert set(job.asset_layer.executable_asset_keys) == set(defs.resolve_all_asset_keys())
    assert defs.resources[WAREHOUSE].connection == offline_portal.warehouse


def test_defs_reject_unknown_executor(monkeypatch):
    monkeypatch.setenv("PORTAL_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="PORTAL_EXECUTOR='celery'"):
        build_definitions()


def cli_environment(tmp_path: Path, portal_variables: dict[str, str]) -> dict[str, str]:
    """Return the environment of `make run`, with the Dagster home and data in `tmp_path`."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_instance.yaml", dagster_home / "dagster.yaml")
    return {
        **os.environ,
        **portal_variables,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }


def run_job_cli(environment: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `dagster job execute` as `make run` does; on timeout kill it with its step processes."""
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "job", "execute", "-m", "portal.definitions", "-j", "materialize_all"]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"dagster job execute timed out after {timeout:.0f} s:\n{output[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["in_process", "multiprocess"])
def test_cli_job_execute(tmp_path, prepare_offline_portal, datasets, snapshot_rows, executor):
    portal_variables = prepare_offline_portal(tmp_path / "data")
    portal_variables["PORTAL_EXECUTOR"] = executor
    # NOTE: the multiprocess executor starts one process per step (about 5 s each on two
    # cores), so that case takes minutes when the machine is busy.
    completed = run_job_cli(cli_environment(tmp_path, portal_variables), timeout=900)

    assert completed.returncode == 0, completed.stdout[-6000:]
    tables = warehouse_tables(portal_variables["PORTAL_WAREHOUSE"])
    assert tables == expected_tables(datasets, snapshot_rows)
    published = {path.name for path in Path(portal_variables["PORTAL_PUBLISH_DIR"]).iterdir()}
    assert published == {name for name, dataset in datasets.items() if dataset.publish}
