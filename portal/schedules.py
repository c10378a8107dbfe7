"""Schedules that refresh each source on its cadence while `make dev` runs the Dagster daemon.

A source whose data may be at most a day old (`max_age` of one day or less, like the
earthquake feed) is downloaded every hour, and every other source once a day. Each cadence
gets a job that selects its raw assets and everything downstream of them, so a new download
flows through its clean, joined and published tables in the same run. The schedules start
stopped until they are turned on in the UI (Automation). CI's materialize workflow runs on
the same crons.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from portal.dataset import Dataset, Source

HOURLY_MAX_AGE = timedelta(days=1)

# GitHub's documentation names the start of every hour as a time of high load, when scheduled
# workflows may be delayed, so both crons avoid minute 0. The daily run starts between two
# hourly ones, so that neither waits on the other's warehouse lock.
CRONS = {"hourly": "20 * * * *", "daily": "50 4 * * *"}

RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def source_cadence(source: Source) -> str:
    """Return how often a source is downloaded: "hourly" or "daily"."""
    if source.max_age is not None and source.max_age <= HOURLY_MAX_AGE:
        return "hourly"
    return "daily"


def sources_by_cadence(datasets: list[Dataset]) -> dict[str, list[str]]:
    """Return the names of the sources of each cadence, each source once, in declaration order."""
    names: dict[str, list[str]] = {cadence: [] for cadence in CRONS}
    for dataset in datasets:
        for source in dataset.sources:
            cadence_names = names[source_cadence(source)]
            if source.name not in cadence_names:
                cadence_names.append(source.name)
    return names


def refresh_job(cadence: str, source_names: list[str]) -> dg.UnresolvedAssetJobDefinition:
    """Define the job that downloads the given sources and rebuilds everything downstream."""
    raw_keys = [dg.AssetKey(["raw", name]) for name in source_names]
    return dg.define_asset_job(
        f"refresh_{cadence}",
        selection=dg.AssetSelection.assets(*raw_keys).downstream(),
        description=(
            f"Download the {cadence} sources ({', '.join(source_names)}) and rebuild and publish "
            "every table that depends on them."
        ),
        config=RUN_CONFIG,
    )


def build_schedules(datasets: list[Dataset]) -> list[dg.ScheduleDefinition]:
    """Return one schedule per cadence that has sources, each running its refresh job in UTC."""
    schedules = []
    for cadence, source_names in sources_by_cadence(datasets).items():
        if not source_names:
            continue
        schedules.append(
            dg.ScheduleDefinition(
                name=f"refresh_{cadence}_schedule",
                job=refresh_job(cadence, source_names),
                cron_schedule=CRONS[cadence],
                execution_timezone="UTC",
                default_status=dg.DefaultScheduleStatus.STOPPED,
                description=f"Refresh the {cadence} sources at cron {CRONS[cadence]!r} (UTC).",
            )
        )
    return schedules
