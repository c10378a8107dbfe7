"""Publishing to HuggingFace against a stand-in of the Hub on 127.0.0.1.

The module fixture runs the whole portal three times on the committed snapshots: a first
publish, a run with unchanged data, and a run after the weather snapshot's origin record got a
new retrieval time. Fault tests push one release directly, without Dagster, so their retries
take milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import huggingface_hub.constants
import polars as pl
import pytest
import yaml
from frictionless import Package, validate
from huggingface_hub import DatasetCard

import portal.huggingface
from portal.dataset import Dataset
from portal.datasets import load_datasets
from portal.definitions import build_definitions
from portal.formats import parse_file
from portal.huggingface import HubPublishError, HuggingFacePublisher
from portal.publish import (
    CARD,
    PACKAGE,
    lineage_paths,
    parquet_bytes,
    publish_release,
    read_source_records,
)
from portal.settings import PROJECT_ROOT
from portal_tests.hub_standin import HubStandin, validate_card_yaml

TOKEN = "hf_test_secret_token_123"
ORG = "portal-test"
DATASETS = {dataset.name: dataset for dataset in load_datasets()}
PUBLISHED = sorted(name for name, dataset in DATASETS.items() if dataset.publish)
LOG = logging.getLogger(__name__)
WEATHER_CSV = PROJECT_ROOT / "data" / "snapshots" / "weather" / "weather.csv"


def release_names(name: str) -> set[str]:
    return {f"{name}.parquet", CARD, PACKAGE}


def hub_env(hub: HubStandin) -> dict[str, str]:
    return {
        "HF_TOKEN": TOKEN,
        "PORTAL_HF_ORG": ORG,
        "HF_ENDPOINT": hub.endpoint,
        "PORTAL_HF_ATTEMPTS": "3",
        "PORTAL_HF_RETRY_PAUSE": "0.01",
        "PORTAL_HF_MAX_PAUSE": "5",
    }


def run_portal(instance: dg.DagsterInstance, only: str | None = None):
    """Materialize every asset, or the raw, clean and publish assets of dataset `only`."""
    defs = build_definitions()
    selection = None
    if only is not None:
        selection = [
            dg.AssetKey(["raw", only]),
            dg.AssetKey([only]),
            dg.AssetKey(["publish", only]),
        ]
    return dg.materialize(
        defs.assets,
        resources=defs.resources,
        instance=instance,
        selection=selection,
        raise_on_error=False,
    )


def publish_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    (event,) = [
        event
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(["publish", name])
    ]
    return event.materialization.metadata


def stored_text(instance: dg.DagsterInstance) -> str:
    """Every stored event of every run, as text."""
    runs = instance.get_runs()
    parts = [repr(run.run_config) for run in runs]
    for run in runs:
        parts += [repr(entry) for entry in instance.all_logs(run.run_id)]
    return "\n".join(parts)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class ThreeRuns:
    hub: HubStandin
    instance: dg.DagsterInstance
    results: list[dg.ExecuteInProcessResult]
    commits_after: list[dict[str, int]]
    publish_dir: Path
    log_lines: list[str]


@pytest.fixture(scope="module")
def three_runs(
    tmp_path_factory: pytest.TempPathFactory,
    prepare_offline_portal: Callable[[Path], dict[str, str]],
) -> Iterator[ThreeRuns]:
    hub = HubStandin(TOKEN).start()
    data_dir = tmp_path_factory.mktemp("portal") / "data"
    captured = Captured()
    loggers = [logging.getLogger(name) for name in ("", "dagster", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(captured)
        logger.setLevel(logging.DEBUG)
    console = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for name, value in {**prepare_offline_portal(data_dir), **hub_env(hub)}.items():
                monkeypatch.setenv(name, value)
            instance = dg.DagsterInstance.ephemeral()
            results, commits_after = [], []
            for step in range(3):
                if step == 2:
                    origin_path = data_dir / "snapshots" / "weather" / "origin.json"
                    origin = json.loads(origin_path.read_text())
                    origin["retrieved"] = "2027-01-02T03:04:05+00:00"
                    origin_path.write_text(json.dumps(origin))
                with contextlib.redirect_stderr(console), contextlib.redirect_stdout(console):
                    results.append(run_portal(instance))
                commits_after.append(
                    {name: len(hub.commits(f"{ORG}/{name}")) for name in PUBLISHED}
                )
            yield ThreeRuns(
                hub, instance, results, commits_after, data_dir / "publish", captured.lines
            )
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(captured)
            logger.setLevel(level)
        hub.stop()


def test_runs_succeed(three_runs: ThreeRuns):
    for result in three_runs.results:
        assert result.success


def test_first_publish_one_commit(three_runs: ThreeRuns):
    for name in PUBLISHED:
        (commit,) = three_runs.hub.commits(f"{ORG}/{name}")[:1]
        assert three_runs.commits_after[0][name] == 1, name
        assert set(commit.changed) == release_names(name)
        assert set(three_runs.hub.repos[f"{ORG}/{name}"].commits[1].files) >= release_names(name)


def test_commit_names_run(three_runs: ThreeRuns):
    run_id = three_runs.results[0].run_id
    for name in PUBLISHED:
        commit = three_runs.hub.commits(f"{ORG}/{name}")[0]
        assert run_id in commit.summary


def test_first_publish_metadata(three_runs: ThreeRuns):
    for name in PUBLISHED:
        metadata = publish_metadata(three_runs.results[0], name)
        assert metadata["dagster/uri"].value == f"{three_runs.hub.endpoint}/datasets/{ORG}/{name}"
        assert metadata["changed"].value is True
        assert set(metadata["uploaded"].value) == release_names(name)


def test_hub_matches_local_release(three_runs: ThreeRuns):
    for name in PUBLISHED:
        files = three_runs.hub.files(f"{ORG}/{name}")
        for file_name in release_names(name):
            local = (three_runs.publish_dir / name / file_name).read_bytes()
            assert files[file_name] == local, f"{name}/{file_name}"


def test_unchanged_run_no_commit(three_runs: ThreeRuns):
    assert three_runs.commits_after[1] == three_runs.commits_after[0]
    # Unchanged snapshots yield no raw tables, so Dagster skips every step downstream of them.
    skipped = {
        event.step_key for event in three_runs.results[1].all_events if event.is_step_skipped
    }
    for name in PUBLISHED:
        assert f"publish__{name}" in skipped, name


def test_changed_origin_one_commit(three_runs: ThreeRuns):
    before, after = three_runs.commits_after[1], three_runs.commits_after[2]
    assert after["weather"] == before["weather"] + 1
    for name in PUBLISHED:
        if name != "weather":
            assert after[name] == before[name], name
    # Only the card names the retrieval time; the data and its "updated" time stay the same.
    assert three_runs.hub.commits(f"{ORG}/weather")[-1].changed == [CARD]


def test_updated_time_kept(three_runs: ThreeRuns):
    first = publish_metadata(three_runs.results[0], "weather")["updated"].value
    third = publish_metadata(three_runs.results[2], "weather")["updated"].value
    assert third == first


def test_token_sent_to_hub(three_runs: ThreeRuns):
    sent = {value for value in three_runs.hub.authorizations if value}
    assert sent == {f"Bearer {TOKEN}"}


def test_token_not_in_events(three_runs: ThreeRuns):
    text = stored_text(three_runs.instance)
    assert "hf_test_secret" not in text
    assert ORG in text  # the scan did read the publish events


def test_token_not_in_logs(three_runs: ThreeRuns):
    # huggingface_hub logs each request at DEBUG level, so the scan covers every Hub call.
    assert [line for line in three_runs.log_lines if f"{ORG}/weather/commit" in line]
    assert not [line for line in three_runs.log_lines if TOKEN in line]


def test_token_not_in_metadata(three_runs: ThreeRuns):
    for result in three_runs.results:
        for event in result.get_asset_materialization_events():
            assert TOKEN not in repr(event.materialization.metadata)


def test_card_header_valid(three_runs: ThreeRuns):
    for name in PUBLISHED:
        card = three_runs.hub.files(f"{ORG}/{name}")[CARD].decode()
        assert validate_card_yaml(card) == [], name


def test_card_header_plain_yaml(three_runs: ThreeRuns):
    for name in PUBLISHED:
        card = DatasetCard((three_runs.publish_dir / name / CARD).read_text())
        header = yaml.safe_load(card.content.split("---")[1])
        assert header["pretty_name"] == DATASETS[name].title
        assert header["configs"][0]["data_files"][0]["path"] == f"{name}.parquet"
        assert header["size_categories"]
        assert header["tags"] == list(DATASETS[name].tags)


def test_card_body_sections(three_runs: ThreeRuns):
    card = (three_runs.publish_dir / "climate_by_year" / CARD).read_text()
    for section in ("## Columns", "## Sources", "## Lineage", "- Rows: 144", "- Updated: "):
        assert section in card
    assert "raw.co2_concentration → co2_concentration → climate_by_year" in card
    assert "https://creativecommons.org/licenses/by/4.0/" in card


def test_datapackage_descriptor_valid(three_runs: ThreeRuns):
    for name in PUBLISHED:
        report = Package.validate_descriptor(str(three_runs.publish_dir / name / PACKAGE))
        assert report.valid, report.flatten(["type", "note"])


def test_datapackage_rows_valid(three_runs: ThreeRuns, tmp_path: Path):
    # Frictionless reads Parquet through pandas, which turns nulls of numeric columns into NaN,
    # and NaN breaks range constraints. A CSV copy keeps nulls empty, so the same schema and
    # constraints are checked on every row.
    for name in PUBLISHED:
        package = json.loads((three_runs.publish_dir / name / PACKAGE).read_text())
        (resource,) = package["resources"]
        frame = pl.read_parquet(three_runs.publish_dir / name / resource["path"])
        frame.write_csv(tmp_path / f"{name}.csv")
        resource.update(path=f"{name}.csv", format="csv", mediatype="text/csv")
        (tmp_path / f"{name}.json").write_text(json.dumps(package))
        report = validate(tmp_path / f"{name}.json")
        assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])


def test_datapackage_weather_schema(three_runs: ThreeRuns):
    package = json.loads((three_runs.publish_dir / "weather" / PACKAGE).read_text())
    (resource,) = package["resources"]
    fields = {field["name"]: field for field in resource["schema"]["fields"]}
    assert resource["path"] == "weather.parquet"
    assert resource["schema"]["primaryKey"] == ["station", "date"]
    assert fields["date"]["type"] == "date"
    assert fields["station"]["constraints"] == {
        "required": True,
        "enum": ["New York", "Seattle"],
    }
    assert fields["temperature_max_c"]["constraints"] == {"minimum": -60, "maximum": 60}
    assert fields["temperature_max_c"]["type"] == "number"
    assert package["licenses"] == [
        {
            "title": "U.S. Government work, public domain",
            "path": "https://www.usa.gov/government-works",
        }
    ]
    assert package["sources"][0]["path"].endswith("weather.csv")


# Direct pushes of one release, without Dagster.


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandin]:
    standin = HubStandin(TOKEN).start()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield standin
    standin.stop()


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Pauses between tries, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(portal.huggingface.time, "sleep", recorded.append)
    return recorded


def weather_frame(rows: int | None = None) -> pl.DataFrame:
    dataset = DATASETS["weather"]
    (source,) = dataset.sources
    raw = parse_file(source, WEATHER_CSV)
    frame = dataset.conform(dataset.build(weather=raw))
    return frame if rows is None else frame.head(rows)


def push_weather(hub: HubStandin, publish_dir: Path, frame: pl.DataFrame, **options):
    dataset: Dataset = DATASETS["weather"]
    publisher = HuggingFacePublisher(
        endpoint=hub.endpoint,
        organisation=ORG,
        **{"attempts": 3, "retry_pause": 0.01, "max_pause": 5.0, **options},
    )
    return publish_release(
        dataset,
        frame,
        read_source_records(PROJECT_ROOT / "data" / "snapshots", dataset, DATASETS),
        lineage_paths(dataset, DATASETS),
        publish_dir,
        publisher,
        "Publish weather from Dagster run test",
        LOG,
    )


def release_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("status", "headers"),
    [(500, {}), (503, {}), (429, {"Retry-After": "3"}), (412, {})],
)
def test_fault_fails_cleanly(
    hub: HubStandin, tmp_path: Path, pauses: list[float], status: int, headers: dict
):
    push_weather(hub, tmp_path, weather_frame())
    files_before = hub.files(f"{ORG}/weather")
    local_before = release_bytes(tmp_path / "weather")
    hub.fail("POST", r"/commit/", status, headers=headers)

    with pytest.raises(HubPublishError) as failure:
        push_weather(hub, tmp_path, weather_frame(rows=100))

    message = str(failure.value)
    assert f"{ORG}/weather" in message
    assert f"answered {status}" in message
    assert "No commit was made" in message
    assert hub.count("POST", r"/commit/") == 1 + 3
    assert len(hub.commits(f"{ORG}/weather")) == 1
    assert hub.files(f"{ORG}/weather") == files_before
    assert release_bytes(tmp_path / "weather") == local_before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_retry_after_honoured(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    hub.fail("POST", r"/commit/", 429, times=2, headers={"Retry-After": "3"})
    publication = push_weather(hub, tmp_path, weather_frame())
    assert pauses == [3.0, 3.0]
    assert publication.hub.commit_url is not None


def test_long_retry_after_fails_at_once(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    hub.fail("POST", r"/commit/", 429, headers={"Retry-After": "3600"})
    with pytest.raises(HubPublishError, match="asked to wait 3600 s"):
        push_weather(hub, tmp_path, weather_frame())
    assert pauses == []
    assert not (tmp_path / "weather").exists()


def test_backoff_doubles(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    hub.fail("POST", r"/commit/", 503, times=2)
    push_weather(hub, tmp_path, weather_frame())
    assert pauses == [0.01, 0.02]


def test_conflict_retried_once_committed(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    hub.fail("POST", r"/commit/", 412, times=2)
    publication = push_weather(hub, tmp_path, weather_frame())
    assert len(hub.commits(f"{ORG}/weather")) == 1
    assert set(publication.hub.uploaded) == release_names("weather")


def test_other_publisher_commit_adopted(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    push_weather(hub, tmp_path / "first", weather_frame(rows=100))
    push_weather(hub, tmp_path / "second", weather_frame(rows=200))
    publication = push_weather(hub, tmp_path / "first", weather_frame(rows=200))
    # The second publisher already committed these rows, so the first finds nothing to do.
    assert publication.hub.commit_url is None
    assert publication.local_changed is True
    assert len(hub.commits(f"{ORG}/weather")) == 2


def test_unauthorised_not_retried(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    hub.token = "hf_other_token"
    with pytest.raises(HubPublishError, match="answered 401"):
        push_weather(hub, tmp_path, weather_frame())
    assert pauses == []


def test_lfs_sha256_compared(hub: HubStandin, tmp_path: Path, pauses: list[float]):
    push_weather(hub, tmp_path, weather_frame())
    entry = next(
        entry
        for entry in hub.route("GET", f"/api/datasets/{ORG}/weather/tree/main", b"")[1]
        if entry["path"] == "weather.parquet"
    )
    assert "lfs" in entry
    publication = push_weather(hub, tmp_path, weather_frame())
    assert publication.hub.commit_url is None


def test_card_validates_on_standin(
    hub: HubStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    push_weather(hub, tmp_path, weather_frame())
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    card = DatasetCard((tmp_path / "weather" / CARD).read_text())
    card.validate("dataset")
    card.data.license = "public-domain"
    with pytest.raises(ValueError, match="not a Hub licence id"):
        DatasetCard(str(card)).validate("dataset")


def test_licence_from_origin_record(tmp_path: Path):
    snapshots = tmp_path / "snapshots"
    (snapshots / "weather").mkdir(parents=True)
    origin = json.loads((PROJECT_ROOT / "data/snapshots/weather/origin.json").read_text())
    origin.update(licence="odbl", licence_name="Open Database License", licence_url="https://x/")
    (snapshots / "weather" / "origin.json").write_text(json.dumps(origin))
    (record,) = read_source_records(snapshots, DATASETS["weather"], DATASETS)
    assert record.licence == "odbl"
    assert record.licence_name == "Open Database License"


def test_hub_telemetry_off():
    assert huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY is True


def test_parquet_bytes_stable_across_processes():
    frame = weather_frame()
    script = (
        "import hashlib, sys\n"
        "from portal.datasets.weather import dataset, source\n"
        "from portal.formats import parse_file\n"
        "from portal.publish import parquet_bytes\n"
        f"raw = parse_file(source, {str(WEATHER_CSV)!r})\n"
        "frame = dataset.conform(dataset.build(weather=raw))\n"
        "sys.stdout.write(hashlib.sha256(parquet_bytes(frame)).hexdigest())\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    ).stdout
    assert hashlib.sha256(parquet_bytes(frame)).hexdigest() == other
    assert parquet_bytes(frame) == parquet_bytes(frame.clone())


# Runs through Dagster without a token, and a failing push through Dagster.


def test_no_token_local_only_once(offline_portal, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "")
    instance = dg.DagsterInstance.ephemeral()
    result = run_portal(instance)
    notes = [
        entry
        for entry in instance.all_logs(result.run_id)
        if entry.user_message and "HF_TOKEN is not set" in entry.user_message
    ]
    assert result.success
    assert len(notes) == 1
    metadata = publish_metadata(result, "weather")
    assert metadata["dagster/uri"].value == str(offline_portal.publish_dir / "weather")
    assert metadata["destination"].value.startswith("local folder")


def test_failed_push_fails_step(offline_portal, hub: HubStandin, monkeypatch: pytest.MonkeyPatch):
    for name, value in hub_env(hub).items():
        monkeypatch.setenv(name, value)
    hub.fail("POST", r"/commit/", 500)
    instance = dg.DagsterInstance.ephemeral()
    result = run_portal(instance, only="weather")

    (failure,) = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert not result.success
    assert f"HuggingFace repository {ORG}/weather" in message
    assert "No commit was made" in message
    assert not (offline_portal.publish_dir / "weather").exists()
    assert hub.commits(f"{ORG}/weather") == []
    assert "hf_test_secret" not in stored_text(instance)
    assert re.search(r"answered 500 \S+", message)
