"""Tests of the Dagster UI in headless Chromium: lineage, checks and a run launched by a click.

One `dagster dev` (webserver and daemon, as `make dev` starts them) serves an offline portal
whose Dagster home, snapshots, warehouse and publish folder lie in a temporary folder. The
lineage test saves the screenshot that the README shows, docs/lineage.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portal.definitions import build_definitions
from portal.settings import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is missing: `make setup` installs it with the dev dependencies",
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Measured on 2 cores shared with other test runs: `dagster dev` served its first page after
# 17 to 55 s, depending on the load.
STARTUP_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
SCREENSHOT = PROJECT_ROOT / "docs" / "lineage.png"

RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId status } } } }"
FINISHED_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(base_url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def wait_until_served(base_url: str, server: subprocess.Popen, log: Path) -> None:
    """Wait until the webserver serves the code location, or fail with its log's tail."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(
                f"{server.args} exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            entries = graphql(base_url, query)["workspaceOrError"]["locationEntries"]
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                return
        except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
            pass
        time.sleep(1)
    pytest.fail(f"{server.args} did not serve {base_url} within {STARTUP_TIMEOUT:.0f} s")


def portal_environment(folder: Path, portal_variables: dict[str, str]) -> dict[str, str]:
    """Return the environment of a UI whose Dagster home is `folder/dagster_home`."""
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_instance.yaml", home / "dagster.yaml")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PORTAL_", "HF_", "DAGSTER_"))
    }
    return (
        env
        | portal_variables
        | {
            "DAGSTER_HOME": str(home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0",
            # Set but empty, so that an HF_TOKEN in the developer's .env cannot start a push.
            "HF_TOKEN": "",
        }
    )


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], base_url: str, log: Path) -> Iterator[None]:
    """Run a UI command in its own process group until the block ends."""
    with log.open("w") as stream:
        server = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_served(base_url, server, log)
        yield
    finally:
        # The UI runs the webserver, the daemon and a code server as child processes.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def dagster_ui(
    tmp_path_factory: pytest.TempPathFactory,
    prepare_offline_portal: Callable[[Path], dict[str, str]],
) -> Iterator[tuple[str, Path]]:
    """Start `dagster dev` on a free port; return its base URL and the portal's data folder."""
    folder = tmp_path_factory.mktemp("ui")
    data_dir = folder / "data"
    env = portal_environment(folder, prepare_offline_portal(data_dir))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [str(PROJECT_ROOT / ".venv" / "bin" / "dagster"), "dev", "-w", "workspace.yaml"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    with serving(command, env, base_url, folder / "dagster-dev.log"):
        yield base_url, data_dir


@pytest.fixture(scope="module")
def readonly_ui(
    tmp_path_factory: pytest.TempPathFactory,
    prepare_offline_portal: Callable[[Path], dict[str, str]],
) -> Iterator[str]:
    """Start `make ui-readonly` on a free port and return its base URL."""
    folder = tmp_path_factory.mktemp("readonly_ui")
    env = portal_environment(folder, prepare_offline_portal(folder / "data"))
    env["UV_OFFLINE"] = "1"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = ["make", "--no-print-directory", "ui-readonly", "HOST=127.0.0.1", f"PORT={port}"]
    command.append(f"DAGSTER_HOME={env['DAGSTER_HOME']}")
    with serving(command, env, base_url, folder / "ui-readonly.log"):
        yield base_url


@pytest.fixture(scope="module")
def page(dagster_ui) -> Iterator:
    """A headless Chromium tab of 1600 x 1000 pixels with a fresh profile."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1600, "height": 1000})
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


@pytest.fixture(scope="module")
def asset_graph():
    return build_definitions().get_repository_def().asset_graph


def test_checks_listed(dagster_ui, page, asset_graph):
    base_url, _ = dagster_ui
    expected = sorted(
        key.name for key in asset_graph.asset_check_keys if key.asset_key.path == ["weather"]
    )
    page.goto(f"{base_url}/assets/weather?view=checks")
    for name in expected:
        page.get_by_text(name, exact=True).first.wait_for()
        assert page.get_by_text(name, exact=True).count() >= 1, name
    assert {"condition_allowed", "row_count"} <= set(expected)


def test_materialize_all_clicked(dagster_ui, page):
    base_url, data_dir = dagster_ui
    before = {run["runId"] for run in graphql(base_url, RUNS_QUERY)["runsOrError"]["results"]}
    page.goto(f"{base_url}/asset-groups")
    page.get_by_role("button", name="Materialize all").first.click()

    deadline = time.monotonic() + RUN_TIMEOUT
    launched: list[dict] = []
    while time.monotonic() < deadline:
        runs = graphql(base_url, RUNS_QUERY)["runsOrError"]["results"]
        launched = [run for run in runs if run["runId"] not in before]
        if launched and launched[0]["status"] in FINISHED_STATUSES:
            break
        time.sleep(2)
    assert len(launched) == 1, f"expected one run launched by the click, found {launched}"
    assert launched[0]["status"] == "SUCCESS", launched[0]
    assert (data_dir / "warehouse.duckdb").is_file()
    assert (data_dir / "publish" / "weather").is_dir()


def pane_top(page) -> float:
    """Return the y coordinate where the graph's pane starts, below the toolbar."""
    toolbar = page.get_by_role("button", name="Materialize all").first.bounding_box()
    return toolbar["y"] + toolbar["height"] + 8


def visible_labels(page) -> list[dict]:
    """Return the text and box of each leaf element wholly inside the graph's pane. The
    graph leaves nodes outside the pane out of the page."""
    return page.evaluate(
        """(paneTop) => [...document.querySelectorAll('div, span')]
            .filter(e => e.children.length === 0)
            .map(e => ({text: e.textContent.trim(), box: e.getBoundingClientRect().toJSON()}))
            .filter(({box}) => box.width > 0 && box.top >= paneTop && box.left >= 0
                && box.bottom <= window.innerHeight && box.right <= window.innerWidth)""",
        pane_top(page),
    )


def graph_box(page, expected: Counter) -> dict[str, float]:
    """Return the box around the expected labels, widened to take in the nodes' borders."""
    boxes = [label["box"] for label in visible_labels(page) if label["text"] in expected]
    margin = 60
    left = max(0, min(box["left"] for box in boxes) - margin)
    top = max(pane_top(page), min(box["top"] for box in boxes) - margin)
    right = min(page.viewport_size["width"], max(box["right"] for box in boxes) + margin)
    bottom = min(page.viewport_size["height"], max(box["bottom"] for box in boxes) + margin)
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def fit_graph(page, expected: Counter) -> None:
    """Zoom out until every expected label is in the pane, then drag the graph to its middle."""
    zoom_out = page.locator('button:has([aria-label="zoom_out"])')
    for _ in range(12):
        shown = Counter(label["text"] for label in visible_labels(page))
        if all(shown[text] >= count for text, count in expected.items()):
            break
        zoom_out.click()
        page.wait_for_timeout(300)

    box = graph_box(page, expected)
    graph_x = box["x"] + box["width"] / 2
    graph_y = box["y"] + box["height"] / 2
    viewport = page.viewport_size
    pane_x = viewport["width"] / 2
    pane_y = (pane_top(page) + viewport["height"]) / 2
    page.mouse.move(graph_x, graph_y)
    page.mouse.down()
    page.mouse.move(pane_x, pane_y, steps=10)
    page.mouse.up()


def test_lineage_every_asset(dagster_ui, page, asset_graph):
    base_url, _ = dagster_ui
    keys = asset_graph.get_all_asset_keys()
    expected_nodes = Counter(key.path[-1] for key in keys)
    expected_groups = Counter({asset_graph.get(key).group_name for key in keys})
    page.goto(f"{base_url}/asset-groups")
    page.get_by_role("button", name="Materialize all").first.wait_for()

    # Make room for the graph and open every group before fitting it into the window.
    page.get_by_role("button", name="Hide navigation").click()
    page.locator('button:has([aria-label="settings"])').last.click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.locator('button:has([aria-label="panel_show_right"])').last.click()
    fit_graph(page, expected_nodes + expected_groups)
    page.wait_for_timeout(1000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, clip=graph_box(page, expected_nodes + expected_groups))

    shown = Counter(label["text"] for label in visible_labels(page))
    for name, count in expected_nodes.items():
        assert shown[name] >= count, f"{name}: {shown[name]} of {count} nodes shown"
    for group in expected_groups:
        assert shown[group] >= 1, f"group {group} is not shown"


def test_readonly_ui_cannot_launch(readonly_ui, page):
    permissions = graphql(readonly_ui, "{ permissions { permission value } }")["permissions"]
    allowed = {entry["permission"]: entry["value"] for entry in permissions}
    page.goto(f"{readonly_ui}/asset-groups")
    button = page.get_by_role("button", name="Materialize all").first
    button.wait_for()
    assert allowed["launch_pipeline_execution"] is False
    assert allowed["edit_sensor"] is False
    assert button.is_disabled()
