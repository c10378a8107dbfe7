"""The Dagster code location: every dataset's assets, the warehouse, the jobs and schedules.

`make run` executes `materialize_all`, or the job that `JOB=` names; `make dev` serves this
location in the Dagster UI.
"""

from __future__ import annotations

import dagster as dg

from portal.assets import WAREHOUSE, build_assets
from portal.datasets import load_datasets
from portal.huggingface import HuggingFacePublisher
from portal.schedules import build_schedules
from portal.settings import HubSettings, Settings
from portal.warehouse import DuckDBPolarsIOManager

EXECUTORS = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
}


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    if settings.executor not in EXECUTORS:
        raise ValueError(
            f"PORTAL_EXECUTOR={settings.executor!r} is not one of {', '.join(EXECUTORS)}"
        )
    materialize_all = dg.define_asset_job(
        "materialize_all",
        selection=dg.AssetSelection.all(),
        description="Download every source, rebuild every table and publish every dataset.",
        config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    datasets = load_datasets()
    return dg.Definitions(
        assets=build_assets(datasets),
        jobs=[materialize_all],
        schedules=build_schedules(datasets),
        resources={
            WAREHOUSE: DuckDBPolarsIOManager(
                connection=settings.warehouse, lock_timeout=settings.lock_timeout
            ),
            "huggingface": HuggingFacePublisher.from_settings(HubSettings.from_env()),
        },
        executor=EXECUTORS[settings.executor],
    )


defs = build_definitions()
