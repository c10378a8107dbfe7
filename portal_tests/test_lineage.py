"""The lineage the Dagster UI shows: `dagster dev` started as `make dev` starts it, then queried.

The UI draws its asset graph from the webserver's GraphQL `assetNodes`, so every asset, group
and dependency edge it returns is what a user sees on the lineage page.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from portal.datasets import load_datasets
from portal.definitions import build_definitions
from portal.settings import PROJECT_ROOT

STARTUP_TIMEOUT_S = 90.0
GROUPS = {"raw", "clean", "joined", "publish"}

LOCATIONS_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

ASSET_NODES_QUERY = """
query {
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
  }
}
"""


@dataclass(frozen=True)
class Webserver:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def graphql(self, query: str) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop `dagster dev` with its webserver, daemon and code server, which share its group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    # A child may outlive `dagster dev` for a moment, so kill whatever is left of the group.
    deadline = time.monotonic() + 10
    while group_alive(process.pid):
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.1)


def group_alive(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_loaded(server: Webserver) -> None:
    """Poll until the webserver serves /server_info and the `portal` location has loaded."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.process.returncode}:\n{server.output()}")
        try:
            requests.get(f"{server.url}/server_info", timeout=2).raise_for_status()
            entries = server.graphql(LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
        except (requests.ConnectionError, requests.Timeout, requests.HTTPError):
            time.sleep(0.25)
            continue
        loaded = [entry for entry in entries if entry["loadStatus"] == "LOADED"]
        if loaded and len(loaded) == len(entries):
            errors = [
                entry["locationOrLoadError"]
                for entry in entries
                if entry["locationOrLoadError"]["__typename"] == "PythonError"
            ]
            assert errors == [], errors
            return
        time.sleep(0.25)
    pytest.fail(f"dagster dev did not load within {STARTUP_TIMEOUT_S:.0f} s:\n{server.output()}")


@pytest.fixture(scope="module")
def webserver(
    tmp_path_factory: pytest.TempPathFactory,
    prepare_offline_portal: Callable[[Path], dict[str, str]],
) -> Iterator[Webserver]:
    """Start `dagster dev` on a free local port with its home and data in a temp folder."""
    root = tmp_path_factory.mktemp("lineage")
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_instance.yaml", dagster_home / "dagster.yaml")
    environment = {
        **os.environ,
        **prepare_offline_portal(root / "data"),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    dagster = Path(sys.executable).parent / "dagster"
    log = root / "dagster_dev.log"

    with log.open("wb") as stream:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_loaded(server)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="module")
def ui_assets(webserver: Webserver) -> dict[str, dict]:
    """Asset nodes the UI shows, keyed by their user-facing key such as `raw/weather`."""
    nodes = webserver.graphql(ASSET_NODES_QUERY)["assetNodes"]
    return {"/".join(node["assetKey"]["path"]): node for node in nodes}


@pytest.fixture(scope="module")
def declared_assets() -> dict[str, dict]:
    """Assets of `build_definitions()` with their group and upstream keys."""
    return {
        spec.key.to_user_string(): {
            "group": spec.group_name,
            "upstream": {dep.asset_key.to_user_string() for dep in spec.deps},
        }
        for spec in build_definitions().resolve_all_asset_specs()
    }


@pytest.mark.slow
def test_ui_shows_every_asset(ui_assets, declared_assets):
    assert set(ui_assets) == set(declared_assets)


@pytest.mark.slow
def test_ui_edges_match_declared(ui_assets, declared_assets):
    for key, declared in declared_assets.items():
        upstream = {"/".join(dep["path"]) for dep in ui_assets[key]["dependencyKeys"]}
        assert upstream == declared["upstream"], key


@pytest.mark.slow
def test_ui_groups_match_declared(ui_assets, declared_assets):
    for key, declared in declared_assets.items():
        assert ui_assets[key]["groupName"] == declared["group"], key


@pytest.mark.slow
def test_ui_groups_are_layers(ui_assets):
    assert {node["groupName"] for node in ui_assets.values()} == GROUPS


@pytest.mark.slow
def test_ui_joined_dataset_edges(ui_assets):
    # The joined table reads three clean tables, never a raw one directly.
    upstream = {"/".join(dep["path"]) for dep in ui_assets["climate_by_year"]["dependencyKeys"]}
    assert upstream == {"co2_concentration", "global_temperature", "disasters"}


ASSET_PAGE_QUERY = """
query AssetPage($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode {
      description
      metadataEntries {
        label
        ... on TableSchemaMetadataEntry {
          schema { columns { name type description constraints { nullable unique } } }
        }
      }
      assetChecksOrError {
        __typename
        ... on AssetChecks { checks { name description blocking } }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def weather_page(webserver: Webserver) -> dict:
    """What the UI's asset page of the clean table `weather` is drawn from."""
    response = requests.post(
        f"{webserver.url}/graphql",
        json={"query": ASSET_PAGE_QUERY, "variables": {"path": ["weather"]}},
        timeout=30,
    )
    response.raise_for_status()
    node = response.json()["data"]["assetNodeOrError"]
    assert node["__typename"] == "AssetNode"
    return node


@pytest.mark.slow
def test_asset_page_column_descriptions(weather_page):
    entries = {entry["label"]: entry for entry in weather_page["metadataEntries"]}
    columns = {
        column["name"]: column for column in entries["dagster/column_schema"]["schema"]["columns"]
    }
    declared = {dataset.name: dataset for dataset in load_datasets()}["weather"]

    assert list(columns) == [column.name for column in declared.columns]
    assert columns["precipitation_mm"]["description"] == "Total precipitation (mm)"
    assert columns["date"]["type"] == "Date"
    assert columns["station"]["constraints"]["nullable"] is False


@pytest.mark.slow
def test_asset_page_lists_checks(weather_page):
    checks = {check["name"]: check for check in weather_page["assetChecksOrError"]["checks"]}

    assert set(checks) == {
        "station_not_null",
        "station_allowed",
        "date_not_null",
        "primary_key",
        "precipitation_mm_range",
        "temperature_max_c_range",
        "temperature_min_c_range",
        "wind_speed_ms_range",
        "condition_allowed",
        "row_count",
    }
    assert checks["condition_allowed"]["blocking"] is True
    assert "drizzle" in checks["condition_allowed"]["description"]
