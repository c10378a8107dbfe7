"""Declared rules: each kind fails on bad input, passes on real snapshots, blocks publishing."""

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from portal.checks import dataset_rules, evaluate, freshness_result
from portal.dataset import Column, Dataset
from portal.datasets import load_datasets
from portal.definitions import build_definitions
from portal.settings import Settings

READINGS = Dataset(
    name="readings",
    title="Readings",
    description="Toy dataset with one column per kind of rule.",
    inputs=[],
    columns=[
        Column("station", pl.String, "Station id", nullable=False),
        Column(
            "day",
            pl.Date,
            "Day",
            nullable=False,
            min=dt.date(2000, 1, 1),
            max=dt.date(2030, 12, 31),
        ),
        Column("reading_id", pl.Int64, "Reading id", unique=True),
        Column("kind", pl.String, "Kind of reading", allowed=["rain", "temperature"]),
        Column("value", pl.Float64, "Measured value", min=-50, max=60),
    ],
    build=lambda: pl.DataFrame(),
    key=["station", "day"],
)

GOOD_ROWS = {
    "station": ["a", "a", "b"],
    "day": [dt.date(2020, 1, 1), dt.date(2020, 1, 2), dt.date(2020, 1, 1)],
    "reading_id": [1, 2, 3],
    "kind": ["rain", "temperature", "rain"],
    "value": [1.5, -3.0, None],
}


def frame_with(**changes: list) -> pl.DataFrame:
    return READINGS.conform(pl.DataFrame({**GOOD_ROWS, **changes}))


def test_rules_pass_on_good_rows():
    assert evaluate(READINGS, frame_with()) == {}


def test_rules_named_per_constraint():
    names = [rule.check_name for rule in dataset_rules(READINGS)]

    assert names == [
        "station_not_null",
        "day_not_null",
        "day_range",
        "reading_id_unique",
        "kind_allowed",
        "value_range",
        "primary_key",
    ]


def test_one_column_key_checked():
    by_day = dataclasses.replace(READINGS, key=["day"])

    names = [rule.check_name for rule in dataset_rules(by_day)]
    broken = evaluate(by_day, frame_with())

    assert "primary_key" in names
    assert list(broken) == ["primary_key"]


def test_unique_key_column_checked_once():
    columns = [
        dataclasses.replace(column, nullable=False) if column.name == "reading_id" else column
        for column in READINGS.columns
    ]
    by_reading = dataclasses.replace(READINGS, columns=columns, key=["reading_id"])

    names = [rule.check_name for rule in dataset_rules(by_reading)]

    assert "reading_id_unique" in names
    assert "primary_key" not in names
    assert evaluate(by_reading, frame_with(reading_id=[1, 1, 3])).keys() == {"reading_id_unique"}


@pytest.mark.parametrize(
    ("changes", "rule", "offending"),
    [
        ({"station": ["a", None, "b"]}, "station_not_null", None),
        (
            {"day": [dt.date(1999, 1, 1), dt.date(2020, 1, 2), dt.date(2020, 1, 1)]},
            "day_range",
            "1999-01-01",
        ),
        ({"reading_id": [1, 1, 3]}, "reading_id_unique", "1"),
        ({"kind": ["rain", "snow", "rain"]}, "kind_allowed", "snow"),
        ({"value": [1.5, 900.0, None]}, "value_range", "900.0"),
        ({"value": [1.5, -51.0, None]}, "value_range", "-51.0"),
        (
            {"day": [dt.date(2020, 1, 1), dt.date(2020, 1, 1), dt.date(2020, 1, 1)]},
            "primary_key",
            None,
        ),
    ],
)
def test_rule_fails_on_bad_value(changes: dict, rule: str, offending: str | None):
    broken = evaluate(READINGS, frame_with(**changes))

    assert list(broken) == [rule]
    if offending is not None:
        assert offending in broken[rule]["failure_case"].to_list()


def test_rules_pass_on_real_snapshots(tables: dict[str, pl.DataFrame]):
    for dataset in load_datasets():
        assert evaluate(dataset, tables[dataset.name]) == {}, dataset.name


def run_everything(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("materialize_all")
    return job.execute_in_process(instance=instance, raise_on_error=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def failed_step_message(result: dg.ExecuteInProcessResult, step: str) -> str:
    failures = [
        event for event in result.all_events if event.is_step_failure and event.step_key == step
    ]
    assert failures, f"step {step} did not fail"
    error, messages = failures[0].step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def test_broken_rule_keeps_last_release(offline_portal: Settings):
    instance = dg.DagsterInstance.ephemeral()
    assert run_everything(instance).success
    release = offline_portal.publish_dir / "global_temperature" / "global_temperature.parquet"
    published = digest(release)

    # A temperature of 900 and a duplicated year arrive from upstream.
    snapshot = offline_portal.snapshot_dir / "global_temperature" / "global_temperature.csv"
    snapshot.write_text(snapshot.read_text() + "2024,900\n2023,1.2\n")
    result = run_everything(instance)

    assert not result.success
    message = failed_step_message(result, "global_temperature")
    assert "temperature_anomaly_c is between -3 and 5" in message
    assert "900.0" in message
    assert "year is unique" in message
    assert "portal/datasets/global_temperature.py" in message
    assert digest(release) == published
    with duckdb.connect(offline_portal.warehouse, read_only=True) as con:
        stored = con.execute("SELECT max(temperature_anomaly_c), count(*) FROM global_temperature")
        assert stored.fetchone() == (1.17, 144)


def test_broken_rule_recorded_as_check(offline_portal: Settings):
    instance = dg.DagsterInstance.ephemeral()
    snapshot = offline_portal.snapshot_dir / "weather" / "weather.csv"
    snapshot.write_text(snapshot.read_text() + "Seattle,2016-01-01,0.0,10.0,5.0,1.0,hail\n")

    result = run_everything(instance)

    evaluations = {
        evaluation.check_name: evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.asset_key == dg.AssetKey("weather")
    }
    assert evaluations["condition_allowed"].passed is False
    assert evaluations["station_allowed"].passed is True
    assert evaluations["condition_allowed"].metadata["failed_values"].value == 1
    assert "hail" in evaluations["condition_allowed"].description
    published = [event.asset_key for event in result.get_asset_materialization_events()]
    assert dg.AssetKey(["publish", "weather"]) not in published
    assert dg.AssetKey(["publish", "disasters"]) in published


def test_row_drop_fails_row_count(offline_portal: Settings, monkeypatch: pytest.MonkeyPatch):
    instance = dg.DagsterInstance.ephemeral()
    assert run_everything(instance).success
    snapshot = offline_portal.snapshot_dir / "disasters" / "disasters.csv"
    lines = snapshot.read_text().splitlines()
    snapshot.write_text("\n".join(lines[:200]) + "\n")

    monkeypatch.setenv("PORTAL_MAX_ROW_DROP", "0.5")
    result = run_everything(instance)

    message = failed_step_message(result, "disasters")
    assert "199 rows now against 803" in message
    assert "PORTAL_MAX_ROW_DROP" in message

    monkeypatch.setenv("PORTAL_MAX_ROW_DROP", "0.9")
    assert run_everything(instance).success


def test_freshness_warns_on_old_data(offline_portal: Settings):
    result = run_everything(dg.DagsterInstance.ephemeral())

    evaluations = {
        (evaluation.asset_key, evaluation.check_name): evaluation
        for evaluation in result.get_asset_check_evaluations()
    }
    earthquakes = evaluations[(dg.AssetKey(["raw", "earthquakes"]), "freshness")]
    weather = evaluations[(dg.AssetKey(["raw", "weather"]), "freshness")]
    assert earthquakes.passed is False
    assert earthquakes.severity == dg.AssetCheckSeverity.WARN
    assert "2018-02-07" in earthquakes.description
    assert weather.passed is True
    assert result.success


def test_freshness_checked_when_unchanged(offline_portal: Settings):
    instance = dg.DagsterInstance.ephemeral()
    assert run_everything(instance).success

    second = run_everything(instance)

    materialized = {event.asset_key for event in second.get_asset_materialization_events()}
    evaluations = {
        evaluation.asset_key: evaluation
        for evaluation in second.get_asset_check_evaluations()
        if evaluation.check_name == "freshness"
    }
    assert dg.AssetKey(["raw", "earthquakes"]) not in materialized
    assert evaluations[dg.AssetKey(["raw", "earthquakes"])].passed is False
    assert evaluations[dg.AssetKey(["raw", "weather"])].passed is True


def test_freshness_reads_date_without_zone():
    source = next(dataset for dataset in load_datasets() if dataset.sources).sources[0]

    result = freshness_result(source, {"data_as_of": "2018-02-07"})

    assert result.passed is False
    assert "2018-02-07" in result.description


def test_key_column_must_be_not_null():
    nullable_key = [Column("station", pl.String, "Station id"), *READINGS.columns[1:]]

    with pytest.raises(ValueError) as raised:
        Dataset(
            name="readings",
            title="Readings",
            description="",
            inputs=[],
            columns=nullable_key,
            build=lambda: pl.DataFrame(),
            key=["station", "day"],
        )

    assert "nullable columns ['station']" in str(raised.value)
