"""Fixtures shared by the portal's tests."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from portal.datasets import load_datasets
from portal.formats import parse_file
from portal.settings import PROJECT_ROOT, Settings

COMMITTED_SNAPSHOTS = PROJECT_ROOT / "data" / "snapshots"

# A developer's .env (tokens, source URLs) must not reach the tests or the processes they start.
os.environ["PORTAL_ENV_FILE"] = ""


@pytest.fixture(scope="session")
def committed_snapshots() -> Path:
    """The repository's `data/snapshots` folder, for reading only: copy it before writing."""
    return COMMITTED_SNAPSHOTS


@pytest.fixture(scope="session")
def snapshot_rows(committed_snapshots: Path) -> dict[str, int]:
    """Data rows of each committed snapshot, counted with the csv and json modules, not Polars."""
    rows = {}
    for path in sorted(committed_snapshots.glob("*/*.csv")):
        with path.open(newline="", encoding="utf-8") as stream:
            rows[path.parent.name] = sum(1 for _ in csv.DictReader(stream))
    for path in sorted(committed_snapshots.glob("*/*.geojson")):
        rows[path.parent.name] = len(json.loads(path.read_bytes())["features"])
    return rows


@pytest.fixture(scope="session")
def tables(committed_snapshots: Path) -> dict[str, pl.DataFrame]:
    """Every dataset built from the committed snapshots, each after the datasets it reads."""
    built: dict[str, pl.DataFrame] = {}
    raw: dict[str, pl.DataFrame] = {}
    pending = load_datasets()
    while pending:
        dataset = next(item for item in pending if set(item.upstream_datasets) <= set(built))
        pending.remove(dataset)
        inputs = {}
        for name, source in zip(dataset.input_names, dataset.inputs, strict=True):
            if isinstance(source, str):
                inputs[name] = built[name]
                continue
            if name not in raw:
                raw[name] = parse_file(source, committed_snapshots / name / source.snapshot_name)
            inputs[name] = raw[name]
        built[dataset.name] = dataset.conform(dataset.build(**inputs))
    return built


@pytest.fixture(scope="session")
def prepare_offline_portal(committed_snapshots: Path) -> Callable[[Path], dict[str, str]]:
    """Return a function that copies the committed snapshots into `data_dir` and returns the
    PORTAL_* variables of an offline run whose snapshots, warehouse and publish folder all lie
    under `data_dir`."""

    def prepare(data_dir: Path) -> dict[str, str]:
        shutil.copytree(committed_snapshots, data_dir / "snapshots")
        return {
            "PORTAL_DATA_DIR": str(data_dir),
            "PORTAL_SNAPSHOT_DIR": str(data_dir / "snapshots"),
            "PORTAL_PUBLISH_DIR": str(data_dir / "publish"),
            "PORTAL_WAREHOUSE": str(data_dir / "warehouse.duckdb"),
            "PORTAL_OFFLINE": "1",
            "PORTAL_EXECUTOR": "in_process",
            "PORTAL_LOCK_TIMEOUT": "10",
            # An empty token keeps a developer's HF_TOKEN (or one in .env) from pushing to the Hub.
            "HF_TOKEN": "",
        }

    return prepare


@pytest.fixture
def offline_portal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare_offline_portal: Callable[[Path], dict[str, str]],
) -> Settings:
    """Settings of an offline portal in `tmp_path/data`, set in the environment for this test."""
    for name, value in prepare_offline_portal(tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()
