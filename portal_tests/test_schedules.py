"""Tests of the refresh jobs and schedules derived from the sources' max_age."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import polars as pl
import pytest

from portal.changes import descendants
from portal.dataset import Column, Dataset, Origin, Source
from portal.datasets import load_datasets
from portal.definitions import build_definitions
from portal.schedules import CRONS, build_schedules, source_cadence, sources_by_cadence

ORIGIN = Origin(producer="Tide office", licence="cc0-1.0", licence_name="CC0", licence_url="")


def tide_source(name: str, max_age: timedelta | None) -> Source:
    return Source(
        name=name, url=f"http://127.0.0.1/{name}.csv", format="csv", origin=ORIGIN, max_age=max_age
    )


def downstream(graph, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    """Return `keys` and every asset that depends on them, following the graph's edges."""
    return set(keys).union(*(descendants(graph, key) for key in keys))


@pytest.mark.parametrize(
    ("max_age", "expected"),
    [
        (None, "daily"),
        (timedelta(hours=1), "hourly"),
        (timedelta(days=1), "hourly"),
        (timedelta(days=2), "daily"),
    ],
)
def test_source_cadence(max_age, expected):
    assert source_cadence(tide_source("tides", max_age)) == expected


def test_sources_by_cadence_once():
    hourly = tide_source("tides", timedelta(hours=6))
    daily = tide_source("winds", None)
    columns = [Column("day", pl.String, "Day")]
    datasets = [
        Dataset("a", "A", "A.", [hourly, daily], columns, build=lambda **_: None),
        Dataset("b", "B", "B.", [hourly], columns, build=lambda **_: None),
    ]
    assert sources_by_cadence(datasets) == {"hourly": ["tides"], "daily": ["winds"]}


def test_no_schedule_without_sources():
    daily = tide_source("winds", None)
    columns = [Column("day", pl.String, "Day")]
    datasets = [Dataset("a", "A", "A.", [daily], columns, build=lambda **_: None)]
    schedules = build_schedules(datasets)
    assert [schedule.name for schedule in schedules] == ["refresh_daily_schedule"]


def test_schedules_in_definitions():
    repository = build_definitions().get_repository_def()
    schedules = {schedule.name: schedule for schedule in repository.schedule_defs}
    assert sorted(schedules) == ["refresh_daily_schedule", "refresh_hourly_schedule"]
    for cadence in CRONS:
        schedule = schedules[f"refresh_{cadence}_schedule"]
        assert schedule.cron_schedule == CRONS[cadence]
        assert schedule.execution_timezone == "UTC"
        assert schedule.job_name == f"refresh_{cadence}"
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_refresh_jobs_select_downstream():
    repository = build_definitions().get_repository_def()
    graph = repository.asset_graph
    cadences = sources_by_cadence(load_datasets())
    assert cadences["hourly"] == ["earthquakes"]
    for cadence, names in cadences.items():
        raw_keys = {dg.AssetKey(["raw", name]) for name in names}
        job = repository.get_job(f"refresh_{cadence}")
        selected = set(job.asset_layer.executable_asset_keys)
        assert selected == downstream(graph, raw_keys), cadence
