"""Downloads against a misbehaving local server: each ends with a good new snapshot, or with an
error that names the source and URL while the previous snapshot stays as it was."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl
import pytest

from portal import fetch as fetch_module
from portal.dataset import Origin, Source
from portal.fetch import FetchError, SourceUnavailable, fetch, fetch_live, sha256_of
from portal.formats import ParseError, parse_file
from portal.settings import Settings
from portal_tests.flaky_server import FlakyServer, Reply

ORIGIN = Origin("Test producer", "cc0-1.0", "CC0 1.0", "https://example.org/licence")
FIRST = b"station,reading\nalpha,1\nbeta,2\n"
SECOND = b"station,reading\nalpha,1\nbeta,2\ngamma,3\n"
PATH = "/readings.csv"


def readings(**dialect) -> Source:
    return Source(
        name="readings",
        url="https://example.org/readings.csv",
        format="csv",
        origin=ORIGIN,
        schema={"station": pl.String, "reading": pl.Int64},
        **dialect,
    )


@pytest.fixture
def server():
    with FlakyServer() as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FlakyServer) -> Settings:
    """Settings with tiny pauses and timeouts, and the `readings` source on the local server."""
    variables = {
        "PORTAL_DATA_DIR": str(tmp_path / "data"),
        "PORTAL_SNAPSHOT_DIR": str(tmp_path / "data" / "snapshots"),
        "PORTAL_WAREHOUSE": str(tmp_path / "data" / "warehouse.duckdb"),
        "PORTAL_PUBLISH_DIR": str(tmp_path / "data" / "publish"),
        "PORTAL_OFFLINE": "0",
        "PORTAL_HOST_PAUSE": "0",
        "PORTAL_FETCH_RETRIES": "2",
        "PORTAL_RETRY_BACKOFF": "0.01",
        "PORTAL_RETRY_MAX_WAIT": "0.5",
        "PORTAL_FETCH_TIMEOUT": "0.5",
        "PORTAL_CONNECT_TIMEOUT": "0.5",
        "PORTAL_SNAPSHOT_HISTORY": "",
        "PORTAL_CONTACT_URL": "https://example.org/portal-contact",
        "PORTAL_READINGS_URL": server.url(PATH),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


@pytest.fixture
def seeded(server: FlakyServer, settings: Settings) -> Path:
    """A first good snapshot of `readings`; returns its folder."""
    server.plan(PATH, Reply(FIRST))
    fetch_live(readings(), settings)
    return settings.snapshot_dir / "readings"


def folder_state(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def expect_error(settings: Settings, source: Source, url: str, *words: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch_live(source, settings)
    message = str(caught.value)
    assert "'readings'" in message
    assert url in message
    for word in words:
        assert word in message
    return caught.value


def test_first_download_stores_snapshot(server, settings):
    server.plan(PATH, Reply(FIRST, etag='"v1"', last_modified="Tue, 01 Dec 2026 10:00:00 GMT"))
    snapshot = fetch_live(readings(), settings)
    folder = settings.snapshot_dir / "readings"
    origin = json.loads((folder / "origin.json").read_text())
    assert snapshot.changed
    assert (folder / "readings.csv").read_bytes() == FIRST
    assert origin["sha256"] == sha256_of(folder / "readings.csv")
    assert origin["etag"] == '"v1"'
    assert origin["last_modified"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert origin["url"] == server.url(PATH)
    assert snapshot.frame["reading"].to_list() == [1, 2]


def test_user_agent_names_contact(server, settings):
    server.plan(PATH, Reply(FIRST))
    fetch_live(readings(), settings)
    agent = server.requests_to(PATH)[0]["user-agent"]
    assert "barefoot-data-portal" in agent
    assert "https://example.org/portal-contact" in agent


def test_timeout_keeps_snapshot(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(SECOND, delay=2))
    started = time.monotonic()
    expect_error(settings, readings(), server.url(PATH), "read timeout")
    assert time.monotonic() - started < 5
    assert len(server.requests_to(PATH)) == 1 + 3  # the seed, then one try and two retries
    assert folder_state(seeded) == before


def test_server_error_then_success(server, settings, seeded):
    server.plan(PATH, Reply(status=500), Reply(status=503), Reply(SECOND))
    snapshot = fetch_live(readings(), settings)
    assert snapshot.changed
    assert (seeded / "readings.csv").read_bytes() == SECOND
    assert len(server.requests_to(PATH)) == 1 + 3


def test_server_error_every_time(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(status=502))
    expect_error(settings, readings(), server.url(PATH), "502")
    assert folder_state(seeded) == before


def test_not_found_is_not_retried(server, settings, seeded):
    server.plan(PATH, Reply(b"gone", status=404))
    expect_error(settings, readings(), server.url(PATH), "HTTP 404")
    assert len(server.requests_to(PATH)) == 1 + 1


def test_retry_after_is_honoured_and_capped(server, settings, monkeypatch):
    monkeypatch.setenv("PORTAL_RETRY_MAX_WAIT", "0.6")
    server.plan(PATH, Reply(status=429, headers={"Retry-After": "1"}), Reply(FIRST))
    started = time.monotonic()
    fetch_live(readings(), Settings.from_env())
    elapsed = time.monotonic() - started
    assert elapsed >= 0.5  # the backoff alone would wait 0.01 s
    assert elapsed < 5  # Retry-After asked for 1 s, capped at 0.6 s

    server.plan(PATH, Reply(status=429, headers={"Retry-After": "3600"}), Reply(SECOND))
    started = time.monotonic()
    snapshot = fetch_live(readings(), Settings.from_env())
    assert time.monotonic() - started < 5
    assert snapshot.changed
    assert snapshot.frame["reading"].to_list() == [1, 2, 3]


def test_truncated_body_keeps_snapshot(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(SECOND, cut_after=20))
    error = expect_error(settings, readings(), server.url(PATH), "broke off", "20 of 39 bytes")
    assert "tried 3 times" in str(error)
    assert folder_state(seeded) == before
    assert list(seeded.glob(".*")) == []


def test_truncated_body_then_success(server, settings, seeded):
    server.plan(PATH, Reply(SECOND, cut_after=20), Reply(SECOND))
    snapshot = fetch_live(readings(), settings)
    assert snapshot.changed
    assert (seeded / "readings.csv").read_bytes() == SECOND


def test_gzip_body_is_complete(server, settings):
    server.plan(PATH, Reply(SECOND * 1, gzip=True))
    snapshot = fetch_live(readings(), settings)
    assert (settings.snapshot_dir / "readings" / "readings.csv").read_bytes() == SECOND
    assert snapshot.frame.height == 3


def test_html_page_is_rejected(server, settings, seeded):
    before = folder_state(seeded)
    page = b"<!DOCTYPE html><html><body>Maintenance</body></html>"
    server.plan(PATH, Reply(page, content_type="text/html"))
    expect_error(settings, readings(), server.url(PATH), "HTML page")
    assert folder_state(seeded) == before


def test_html_labelled_csv_is_rejected(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(b"\n  <html><body>Sign in</body></html>", content_type="text/csv"))
    expect_error(settings, readings(), server.url(PATH), "HTML page")
    assert folder_state(seeded) == before


def test_empty_body_is_rejected(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(b""))
    expect_error(settings, readings(), server.url(PATH), "empty")
    assert folder_state(seeded) == before


def test_not_modified_sends_validators(server, settings):
    modified = "Tue, 01 Dec 2026 10:00:00 GMT"
    server.plan(PATH, Reply(FIRST, etag='"v1"', last_modified=modified))
    fetch_live(readings(), settings)
    folder = settings.snapshot_dir / "readings"
    before = folder_state(folder)

    snapshot = fetch_live(readings(), settings)
    second_request = server.requests_to(PATH)[1]
    assert second_request["if-none-match"] == '"v1"'
    assert second_request["if-modified-since"] == modified
    assert server.bodies_sent[PATH] == 1
    assert not snapshot.changed
    assert "304" in snapshot.reason
    assert snapshot.frame["reading"].to_list() == [1, 2]
    assert folder_state(folder) == before


def test_same_bytes_leave_files_alone(server, settings, seeded):
    before = folder_state(seeded)
    snapshot = fetch_live(readings(), settings)
    assert not snapshot.changed
    assert snapshot.reason == "unchanged (same sha256)"
    assert folder_state(seeded) == before


def test_edited_snapshot_gets_no_validators(server, settings):
    server.plan(PATH, Reply(FIRST, etag='"v1"'))
    fetch_live(readings(), settings)
    (settings.snapshot_dir / "readings" / "readings.csv").write_bytes(b"station,reading\nx,9\n")
    snapshot = fetch_live(readings(), settings)
    assert "if-none-match" not in server.requests_to(PATH)[1]
    assert snapshot.frame["reading"].to_list() == [1, 2]


def test_changed_file_is_kept_in_history(server, settings, seeded):
    server.plan(PATH, Reply(SECOND))
    snapshot = fetch_live(readings(), settings)
    history = sorted((seeded / "history").iterdir())
    copies = [path for path in history if path.suffix == ".csv"]
    records = [path for path in history if path.name.endswith(".origin.json")]
    assert snapshot.changed
    assert [path.read_bytes() for path in copies] == [FIRST, SECOND]
    assert len(records) == 2
    assert json.loads(records[-1].read_text())["sha256"] == sha256_of(seeded / "readings.csv")
    assert (seeded / "readings.csv").read_bytes() == SECOND


def test_history_keeps_newest(server, settings, monkeypatch):
    monkeypatch.setenv("PORTAL_SNAPSHOT_HISTORY", "2")
    for version in range(4):
        server.plan(PATH, Reply(FIRST + f"delta,{version}\n".encode()))
        fetch_live(readings(), Settings.from_env())
    history = settings.snapshot_dir / "readings" / "history"
    copies = sorted(history.glob("*.csv"))
    assert len(copies) == 2
    assert len(list(history.glob("*.origin.json"))) == 2
    assert copies[-1].read_bytes().endswith(b"delta,3\n")
    assert copies[0].read_bytes().endswith(b"delta,2\n")


def test_source_history_limit_wins(server, settings):
    server.plan(PATH, Reply(FIRST))
    fetch_live(readings(history=0), settings)
    assert not (settings.snapshot_dir / "readings" / "history").exists()


def test_byte_order_mark_is_dropped(server, settings):
    server.plan(PATH, Reply(b"\xef\xbb\xbf" + SECOND))
    snapshot = fetch_live(readings(), settings)
    assert snapshot.frame.columns == ["station", "reading"]
    assert snapshot.frame["reading"].dtype == pl.Int64


def test_latin1_declared(server, settings):
    server.plan(PATH, Reply("station,reading\nZürich,4\nGenève,5\n".encode("latin-1")))
    snapshot = fetch_live(readings(encoding="latin-1"), settings)
    assert snapshot.frame["station"].to_list() == ["Zürich", "Genève"]


def test_latin1_detected_with_auto(server, settings):
    server.plan(PATH, Reply("station,reading\nZürich,4\n".encode("latin-1")))
    snapshot = fetch_live(readings(encoding="auto"), settings)
    assert snapshot.frame["station"].to_list() == ["Zürich"]


def test_latin1_undeclared_names_line(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply("station,reading\nalpha,1\nZürich,4\n".encode("latin-1")))
    expect_error(settings, readings(), server.url(PATH), "line 3", "latin-1")
    assert folder_state(seeded) == before


def test_extra_field_names_line(server, settings, seeded):
    before = folder_state(seeded)
    rows = b"".join(f"s{index},{index}\n".encode() for index in range(500))
    server.plan(PATH, Reply(b"station,reading\n" + rows + b"late,7,surplus\n"))
    expect_error(settings, readings(), server.url(PATH), "line 502", "3 fields")
    assert folder_state(seeded) == before


def test_cut_last_line_keeps_snapshot(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(SECOND[:-7]))  # the body ends in "beta,2\ng"
    error = expect_error(settings, readings(), server.url(PATH), "line 4", "1 fields")
    assert "cut short" in str(error)
    assert folder_state(seeded) == before


def test_short_line_names_line(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_bytes(b"station,reading\nalpha,1\nbeta\ngamma,3\n")
    with pytest.raises(ParseError) as caught:
        parse_file(readings(), path)
    message = str(caught.value)
    assert str(path) in message
    assert "'readings'" in message
    assert "line 3 has 1 fields" in message


def test_open_quote_at_end_names_line(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_bytes(b'station,reading\nalpha,1\nbeta,"2')
    with pytest.raises(ParseError) as caught:
        parse_file(readings(), path)
    assert str(path) in str(caught.value)
    assert "line 3" in str(caught.value)


def test_blank_lines_add_no_rows(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_bytes(b"station,reading\r\nalpha,1\r\n\r\nbeta,2\r\n\r\n")
    frame = parse_file(readings(), path)
    assert frame["station"].to_list() == ["alpha", "beta"]
    assert frame["reading"].to_list() == [1, 2]


def test_quoted_newline_stays_one_field(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_bytes(b'station,reading\n"alpha\nnorth",1\n"beta\n\nsouth",\n')
    frame = parse_file(readings(), path)
    assert frame["station"].to_list() == ["alpha\nnorth", "beta\n\nsouth"]
    assert frame["reading"].to_list() == [1, None]


def test_renamed_column_names_schema(server, settings, seeded):
    before = folder_state(seeded)
    server.plan(PATH, Reply(b"station,value\nalpha,1\n"))
    error = expect_error(settings, readings(), server.url(PATH), "was downloaded, but")
    message = str(error)
    assert "header no longer has the declared columns ['reading']" in message
    assert "['station', 'value']" in message
    assert "schema= in portal/datasets/readings.py" in message
    assert "not CSV" not in message
    assert "failed" not in message
    assert folder_state(seeded) == before


def test_thousands_far_down(server, settings):
    rows = b"".join(f"s{index},{index}\n".encode() for index in range(5000))
    server.plan(PATH, Reply(b"station,reading\n" + rows + b'late,"2,288"\n'))
    snapshot = fetch_live(readings(thousands=","), settings)
    assert snapshot.frame["reading"].dtype == pl.Int64
    assert snapshot.frame["reading"][-1] == 2288


def test_thousands_undeclared_names_row(server, settings, seeded):
    before = folder_state(seeded)
    rows = b"".join(f"s{index},{index}\n".encode() for index in range(5000))
    server.plan(PATH, Reply(b"station,reading\n" + rows + b'late,"2,288"\n'))
    expect_error(settings, readings(), server.url(PATH), "data row 5001", "'2,288'")
    assert folder_state(seeded) == before


def test_empty_column_keeps_type(server, settings):
    server.plan(PATH, Reply(b"station,reading\nalpha,\nbeta,\n"))
    snapshot = fetch_live(readings(), settings)
    assert snapshot.frame["reading"].dtype == pl.Int64
    assert snapshot.frame["reading"].null_count() == 2


def test_decimal_comma_dialect(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_bytes(b"station;reading\nalpha;3,5\n")
    source = Source(
        name="readings",
        url="https://example.org/readings.csv",
        format="csv",
        origin=ORIGIN,
        schema={"reading": pl.Float64},
        separator=";",
        decimal_comma=True,
    )
    assert parse_file(source, path)["reading"].to_list() == [3.5]


def test_renamed_column_is_parse_error(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_bytes(b"station,value\nalpha,1\n")
    with pytest.raises(ParseError, match="reading"):
        parse_file(readings(), path)


def test_unresolvable_host_fails_fast(settings, monkeypatch, seeded):
    before = folder_state(seeded)
    monkeypatch.setenv("PORTAL_FETCH_RETRIES", "5")
    monkeypatch.setenv("PORTAL_RETRY_BACKOFF", "2")
    url = "http://portal-test-host.invalid/readings.csv"
    monkeypatch.setenv("PORTAL_READINGS_URL", url)
    started = time.monotonic()
    error = expect_error(Settings.from_env(), readings(), url, "could not be resolved")
    assert time.monotonic() - started < 5
    assert "\n" not in str(error)
    assert folder_state(seeded) == before


def test_deadline_stops_trickle(server, settings, seeded, monkeypatch):
    before = folder_state(seeded)
    monkeypatch.setenv("PORTAL_DOWNLOAD_DEADLINE", "0.5")
    server.plan(PATH, Reply(SECOND * 200, trickle=0.1))
    started = time.monotonic()
    expect_error(Settings.from_env(), readings(), server.url(PATH), "deadline")
    assert time.monotonic() - started < 3
    assert folder_state(seeded) == before


def test_retry_after_past_deadline(server, settings, seeded, monkeypatch):
    before = folder_state(seeded)
    monkeypatch.setenv("PORTAL_DOWNLOAD_DEADLINE", "0.5")
    monkeypatch.setenv("PORTAL_RETRY_MAX_WAIT", "30")
    server.plan(PATH, Reply(status=503, headers={"Retry-After": "20"}), Reply(SECOND))
    started = time.monotonic()
    expect_error(Settings.from_env(), readings(), server.url(PATH), "deadline")
    assert time.monotonic() - started < 5
    assert folder_state(seeded) == before


def test_deadline_stops_retries(server, settings, seeded, monkeypatch):
    before = folder_state(seeded)
    monkeypatch.setenv("PORTAL_DOWNLOAD_DEADLINE", "0.6")
    monkeypatch.setenv("PORTAL_FETCH_RETRIES", "20")
    monkeypatch.setenv("PORTAL_FETCH_TIMEOUT", "0.3")
    server.plan(PATH, Reply(SECOND, delay=1))
    started = time.monotonic()
    expect_error(Settings.from_env(), readings(), server.url(PATH), "deadline", "read timeout")
    assert time.monotonic() - started < 3
    assert folder_state(seeded) == before


def test_progress_is_logged(server, settings, monkeypatch, caplog):
    monkeypatch.setattr(fetch_module, "PROGRESS_SECONDS", 0.0)
    server.plan(PATH, Reply(FIRST + b"x,1\n" * 50_000))
    with caplog.at_level(logging.INFO, logger="portal.fetch"):
        fetch_live(readings(), settings)
    progress = [record.getMessage() for record in caplog.records if "MB" in record.getMessage()]
    assert progress
    assert "%" in progress[-1]
    assert "readings" in progress[-1]


def test_host_pause_spaces_requests(server, settings, monkeypatch):
    monkeypatch.setenv("PORTAL_HOST_PAUSE", "0.4")
    server.plan(PATH, Reply(FIRST))
    fetch_live(readings(), Settings.from_env())
    fetch_live(readings(), Settings.from_env())
    starts = [seen for path, _, seen in server.requests if path == PATH]
    assert starts[1] - starts[0] >= 0.35


def test_offline_uses_snapshot(settings, monkeypatch, seeded, server):
    monkeypatch.setenv("PORTAL_OFFLINE", "1")
    snapshot = fetch(readings(), Settings.from_env())
    assert snapshot.used == "snapshot"
    assert "offline" in snapshot.reason
    assert len(server.requests_to(PATH)) == 1


def test_unreachable_uses_snapshot(settings, monkeypatch, seeded):
    monkeypatch.setenv("PORTAL_READINGS_URL", "http://127.0.0.1:9/readings.csv")
    snapshot = fetch(readings(), Settings.from_env())
    assert snapshot.used == "snapshot"
    assert "http://127.0.0.1:9/readings.csv" in snapshot.reason
    assert "Connection refused" in snapshot.reason
    assert "\n" not in snapshot.reason
    assert snapshot.frame["reading"].to_list() == [1, 2]


def test_offline_snapshot_logs_info(settings, monkeypatch, seeded):
    monkeypatch.setenv("PORTAL_OFFLINE", "1")
    snapshot = fetch(readings(), Settings.from_env())
    assert snapshot.offline
    assert snapshot.log_level == logging.INFO


def test_fallback_snapshot_logs_warning(settings, monkeypatch, seeded):
    monkeypatch.setenv("PORTAL_READINGS_URL", "http://127.0.0.1:9/readings.csv")
    snapshot = fetch(readings(), Settings.from_env())
    assert not snapshot.offline
    assert snapshot.log_level == logging.WARNING


def test_offline_without_snapshot_says_download(settings, monkeypatch):
    monkeypatch.setenv("PORTAL_OFFLINE", "1")
    with pytest.raises(SourceUnavailable) as caught:
        fetch(readings(), Settings.from_env())
    message = str(caught.value)
    assert "without PORTAL_OFFLINE=1" in message
    assert str(settings.snapshot_dir / "readings" / "readings.csv") in message
    assert "Check the URL" not in message


def test_unreachable_without_snapshot_says_check_url(settings, monkeypatch):
    monkeypatch.setenv("PORTAL_READINGS_URL", "http://127.0.0.1:9/readings.csv")
    with pytest.raises(SourceUnavailable) as caught:
        fetch(readings(), Settings.from_env())
    message = str(caught.value)
    assert "Check the URL (http://127.0.0.1:9/readings.csv)" in message
    assert "PORTAL_OFFLINE" not in message
