"""The earthquake table accumulates events across scrapes, the latest revision of each winning."""

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from portal.dataset import Accumulate
from portal.definitions import build_definitions
from portal.settings import Settings


class FeedHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/geo+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FeedHandler)
    server.body = b""  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def feed_of(collection: dict, features: list[dict]) -> bytes:
    return json.dumps({**collection, "features": features}).encode()


def materialize_earthquakes(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(["raw", "earthquakes"]), dg.AssetKey("earthquakes")],
    )


def test_merge_keeps_latest_revision():
    accumulate = Accumulate(key=["event_id"], latest_by="updated")
    stored = pl.DataFrame({"event_id": ["a", "b"], "updated": [1, 5], "magnitude": [1.0, 2.0]})
    fresh = pl.DataFrame({"event_id": ["b", "c"], "updated": [3, 1], "magnitude": [9.0, 3.0]})

    merged = accumulate.merge(stored, fresh).sort("event_id")

    assert merged["event_id"].to_list() == ["a", "b", "c"]
    assert merged["magnitude"].to_list() == [1.0, 2.0, 3.0]


def test_merge_adds_declared_column():
    accumulate = Accumulate(key=["event_id"], latest_by="updated")
    stored = pl.DataFrame({"event_id": ["a"], "updated": [1], "retired": [True]})
    fresh = pl.DataFrame({"event_id": ["b"], "updated": [2], "depth_km": [10.0]})

    merged = accumulate.merge(stored, fresh).sort("event_id")

    assert merged.columns == ["event_id", "updated", "depth_km"]
    assert merged["depth_km"].to_list() == [None, 10.0]


def test_three_overlapping_scrapes(
    offline_portal: Settings,
    feed_server: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    committed_snapshots: Path,
):
    collection = json.loads(
        (committed_snapshots / "earthquakes" / "earthquakes.geojson").read_bytes()
    )
    features = collection["features"]
    revised = copy.deepcopy(features[120])
    revised["properties"]["updated"] += 3_600_000
    revised["properties"]["mag"] = 4.4
    revised["properties"]["status"] = "reviewed"
    scrapes = [features[0:100], features[50:150], [*features[100:120], revised, *features[121:200]]]

    port = feed_server.server_address[1]
    monkeypatch.setenv("PORTAL_OFFLINE", "0")
    monkeypatch.setenv("PORTAL_EARTHQUAKES_URL", f"http://127.0.0.1:{port}/all_week.geojson")
    instance = dg.DagsterInstance.ephemeral()
    for scrape in scrapes:
        feed_server.body = feed_of(collection, scrape)  # type: ignore[attr-defined]
        assert materialize_earthquakes(instance).success

    with duckdb.connect(offline_portal.warehouse, read_only=True) as con:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM earthquakes"
        ).fetchone()
        magnitude, status = con.execute(
            "SELECT magnitude, status FROM earthquakes WHERE event_id = ?", [features[120]["id"]]
        ).fetchone()
        raw_rows = con.execute("SELECT count(*) FROM raw.earthquakes").fetchone()[0]
    assert rows == 200
    assert distinct == 200
    assert magnitude == 4.4
    assert status == "reviewed"
    assert raw_rows == 100
