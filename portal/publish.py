"""Publishing finished datasets as releases: zstd Parquet, a dataset card and datapackage.json.

A release of dataset `weather` is the folder `data/publish/weather/` with `weather.parquet`,
`README.md` (a dataset card built with huggingface_hub's card classes, valid on the Hub) and
`datapackage.json` (a Frictionless data package of the same file). Every run writes the local
folder, the dry run. With HF_TOKEN set, the same files also go to a HuggingFace dataset
repository (`portal.huggingface`).

Order of a publish: the release is staged in a hidden folder beside the last one, pushed to
the Hub from there, and swapped in for the local release only after the Hub accepted it (or
found nothing to change). A failed push therefore leaves both the Hub and the local release as
they were. A release whose files all match the last one changes nothing: the "updated" time
in the card and data package is carried over when the Parquet bytes are the same, so an
unchanged table never makes a commit.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import polars as pl
from huggingface_hub import DatasetCard, DatasetCardData

from portal.dataset import Dataset
from portal.huggingface import HubPush, HuggingFacePublisher

CARD = "README.md"
PACKAGE = "datapackage.json"
PARQUET_COMPRESSION = "zstd"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"

SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]

# Open Definition ids (the `name` of a data package licence) of Hub licence ids.
OPEN_DEFINITION_LICENCES = {
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "cc0-1.0": "CC0-1.0",
    "odbl": "ODbL-1.0",
    "odc-by": "ODC-BY-1.0",
    "pddl": "ODC-PDDL-1.0",
}

INTEGER_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


@dataclass(frozen=True)
class SourceRecord:
    """A source behind a published dataset, as its snapshot's origin record describes it."""

    name: str
    producer: str
    url: str
    licence: str
    licence_name: str
    licence_url: str
    retrieved: str
    sha256: str
    data_as_of: str = ""


class PreviousRelease(Protocol):
    """The release a new one replaces: the local folder or a Hub repository."""

    def holds(self, path: str, data: bytes) -> bool: ...

    def read(self, path: str) -> bytes | None: ...


class LocalRelease:
    """The last release in the local publish folder; a missing folder holds no file."""

    def __init__(self, folder: Path):
        self.folder = folder

    def holds(self, path: str, data: bytes) -> bool:
        return self.read(path) == data

    def read(self, path: str) -> bytes | None:
        file = self.folder / path
        return file.read_bytes() if file.is_file() else None


@dataclass(frozen=True)
class Publication:
    """Where a release went and whether any of its files changed there."""

    release: Path
    local_changed: bool
    updated: str
    files: dict[str, int]
    hub: HubPush | None


def read_json(data: bytes | None) -> dict:
    """Parse a JSON object from a file's bytes, or return {} when it is missing or invalid."""
    if data is None:
        return {}
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def size_category(rows: int) -> str:
    for limit, label in SIZE_CATEGORIES:
        if rows < limit:
            return label
    return "n>1B"


def parquet_name(dataset: Dataset) -> str:
    return f"{dataset.name}.parquet"


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """Write `frame` as zstd Parquet in memory.

    Polars 2.1 writes identical bytes for identical frames (checked across processes), which
    the "nothing changed" decision relies on. A new Polars version may write other bytes for
    the same data and so cause one new release.
    """
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression=PARQUET_COMPRESSION, statistics=True)
    return buffer.getvalue()


def licence_id(name: str) -> str:
    """Turn a licence's name into the id form the Hub expects for `license_name`."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.") or "other"


def card_licences(sources: list[SourceRecord]) -> dict[str, Any]:
    """Return the card's licence keys: `license`, plus `license_name` and `license_link` when
    a source's licence is outside the Hub's list (`other`)."""
    licences = sorted({source.licence for source in sources}) or ["unknown"]
    keys: dict[str, Any] = {"license": licences[0] if len(licences) == 1 else licences}
    outside_hub_list = [source for source in sources if source.licence == "other"]
    other = sorted({(source.licence_name, source.licence_url) for source in outside_hub_list})
    if other:
        keys["license_name"] = "-and-".join(licence_id(name) for name, _ in other)
        keys["license_link"] = other[0][1]
    return keys


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_card(
    dataset: Dataset,
    frame: pl.DataFrame,
    sources: list[SourceRecord],
    lineage: list[str],
    updated: str,
) -> DatasetCard:
    """Build the dataset card: a Hub-valid YAML header and a body a reader can act on."""
    card_data = DatasetCardData(
        pretty_name=dataset.title,
        size_categories=[size_category(frame.height)],
        tags=list(dataset.tags),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": parquet_name(dataset)}],
            }
        ],
        **card_licences(sources),
    )

    columns = "\n".join(
        f"| `{column.name}` | `{frame.schema[column.name]}` | "
        f"{markdown_cell(column.description_with_unit)} |"
        for column in dataset.columns
    )
    source_lines = "\n".join(
        f"- **{source.name}**: {source.producer}, <{source.url}>, licence "
        f"[{source.licence_name}]({source.licence_url}), retrieved {source.retrieved}"
        f"{f', data as of {source.data_as_of}' if source.data_as_of else ''} "
        f"(sha256 `{source.sha256[:12]}`)"
        for source in sources
    )
    lineage_lines = "\n".join(f"- {line}" for line in lineage)
    body = f"""
# {dataset.title}

{dataset.description.strip()}

- Rows: {frame.height:,}
- Updated: {updated}
- Files: `{parquet_name(dataset)}` (Parquet, zstd) and `{PACKAGE}` (Frictionless data package)

## Columns

| column | type | description |
|---|---|---|
{columns}

## Sources

{source_lines}

## Lineage

{lineage_lines}

Built by a barefoot data portal: every step from download to this file is a Dagster asset.
"""
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def field_type(dtype: pl.DataType) -> str:
    """Map a Polars type to a Frictionless Table Schema field type."""
    if isinstance(dtype, INTEGER_TYPES):
        return "integer"
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return "number"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    simple = {pl.Boolean: "boolean", pl.Date: "date", pl.Datetime: "datetime", pl.Time: "time"}
    for polars_type, name in simple.items():
        if isinstance(dtype, polars_type):
            return name
    if isinstance(dtype, pl.List | pl.Array):
        return "array"
    if isinstance(dtype, pl.Struct):
        return "object"
    return "any"


def json_value(value: Any) -> Any:
    """Return `value` as JSON can hold it: dates and datetimes as ISO 8601 text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def field_descriptor(dataset: Dataset, frame: pl.DataFrame, name: str) -> dict[str, Any]:
    column = next(column for column in dataset.columns if column.name == name)
    constraints: dict[str, Any] = {}
    if not column.nullable:
        constraints["required"] = True
    if column.unique:
        constraints["unique"] = True
    if column.allowed is not None:
        constraints["enum"] = [json_value(value) for value in column.allowed]
    if column.min is not None:
        constraints["minimum"] = json_value(column.min)
    if column.max is not None:
        constraints["maximum"] = json_value(column.max)
    descriptor = {
        "name": name,
        "type": field_type(frame.schema[name]),
        "description": column.description_with_unit,
    }
    if constraints:
        descriptor["constraints"] = constraints
    return descriptor


def render_datapackage(
    dataset: Dataset, frame: pl.DataFrame, sources: list[SourceRecord], updated: str
) -> dict[str, Any]:
    """Describe the release as a Frictionless tabular data package."""
    schema: dict[str, Any] = {
        "fields": [field_descriptor(dataset, frame, name) for name in frame.columns]
    }
    if dataset.key:
        schema["primaryKey"] = list(dataset.key)

    licences = []
    for licence, title, url in sorted(
        {(source.licence, source.licence_name, source.licence_url) for source in sources}
    ):
        entry = {"title": title, "path": url}
        if licence in OPEN_DEFINITION_LICENCES:
            entry = {"name": OPEN_DEFINITION_LICENCES[licence], **entry}
        licences.append(entry)

    return {
        "profile": "tabular-data-package",
        "name": dataset.name,
        "title": dataset.title,
        "description": dataset.description.strip(),
        "keywords": list(dataset.tags),
        "created": updated,
        "licenses": licences,
        "sources": [
            {"title": f"{source.producer} ({source.name})", "path": source.url}
            for source in sources
        ],
        "resources": [
            {
                "name": dataset.name,
                "path": parquet_name(dataset),
                "profile": "tabular-data-resource",
                "format": "parquet",
                "mediatype": PARQUET_MEDIA_TYPE,
                "schema": schema,
            }
        ],
    }


def release_time(previous: PreviousRelease, name: str, parquet: bytes) -> str:
    """Return when the data last changed: the previous release's time when it holds the same
    Parquet bytes, else now."""
    if previous.holds(name, parquet):
        created = read_json(previous.read(PACKAGE)).get("created")
        if isinstance(created, str) and created:
            return created
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def release_files(
    dataset: Dataset,
    frame: pl.DataFrame,
    sources: list[SourceRecord],
    lineage: list[str],
    previous: PreviousRelease,
) -> tuple[dict[str, bytes], str]:
    """Return the release's files by name, and its "updated" time."""
    parquet = parquet_bytes(frame)
    updated = release_time(previous, parquet_name(dataset), parquet)
    card = render_card(dataset, frame, sources, lineage, updated)
    package = render_datapackage(dataset, frame, sources, updated)
    files = {
        parquet_name(dataset): parquet,
        CARD: str(card).encode("utf-8"),
        PACKAGE: (json.dumps(package, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    }
    return files, updated


def stage(folder: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    """Write `files` into the empty staging `folder`, replacing what an earlier try left."""
    for old in folder.iterdir():
        old.unlink()
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def swap_in(publish_dir: Path, name: str, staging: Path) -> bool:
    """Make `staging` the release folder of dataset `name`; return False, and touch nothing,
    when the release already holds exactly the staged files."""
    release = publish_dir / name
    staged = {path.name: path.read_bytes() for path in staging.iterdir()}
    if release.is_dir():
        current = {path.name: path.read_bytes() for path in release.iterdir() if path.is_file()}
        if current == staged:
            return False
        retired = publish_dir / f".{name}.old"
        shutil.rmtree(retired, ignore_errors=True)
        release.rename(retired)
        staging.rename(release)
        shutil.rmtree(retired)
    else:
        staging.rename(release)
    return True


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_release(
    dataset: Dataset,
    frame: pl.DataFrame,
    sources: list[SourceRecord],
    lineage: list[str],
    publish_dir: Path,
    hub: HuggingFacePublisher | None,
    message: str,
    log: Any,
) -> Publication:
    """Stage the release, push it to the Hub when `hub` is given, then swap the local release.

    Raises HubPublishError when the push fails; the local release is then left as it was.
    """
    publish_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=publish_dir, prefix=f".{dataset.name}.new-"))
    # mkdtemp creates the folder readable by its owner only, and the release is this folder
    # renamed, so give it the permissions of any new folder for a web server or other users.
    staging.chmod(0o777 & ~current_umask())
    rendered: dict[str, Any] = {}

    def render(previous: PreviousRelease) -> dict[str, Path]:
        files, rendered["updated"] = release_files(dataset, frame, sources, lineage, previous)
        return stage(staging, files)

    try:
        if hub is None:
            render(LocalRelease(publish_dir / dataset.name))
            push = None
        else:
            push = hub.push(hub.repo_id(dataset.name), render, message, log)
        sizes = {path.name: path.stat().st_size for path in staging.iterdir()}
        local_changed = swap_in(publish_dir, dataset.name, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Publication(publish_dir / dataset.name, local_changed, rendered["updated"], sizes, push)


def lineage_paths(dataset: Dataset, lookup: Mapping[str, Dataset]) -> list[str]:
    """Return one line per path from a raw table to the published file, joins included."""

    def paths(current: Dataset) -> list[list[str]]:
        found = [[f"raw.{source.name}", current.name] for source in current.sources]
        for name in current.upstream_datasets:
            found += [[*path, current.name] for path in paths(lookup[name])]
        return found

    return [" → ".join([*path, parquet_name(dataset)]) for path in paths(dataset)]


def read_source_records(
    snapshot_dir: Path, dataset: Dataset, lookup: Mapping[str, Dataset]
) -> list[SourceRecord]:
    """Collect the origin records of every source behind `dataset`, following joins.

    Producer, URL and licence come from the snapshot's `origin.json`, which records what was
    true when the file was retrieved; the declaration fills in a record that lacks them.
    """
    records: dict[str, SourceRecord] = {}
    for source in dataset.sources:
        origin_path = snapshot_dir / source.name / "origin.json"
        origin = read_json(origin_path.read_bytes() if origin_path.is_file() else None)
        records[source.name] = SourceRecord(
            name=source.name,
            producer=origin.get("producer") or source.origin.producer,
            url=origin.get("url") or source.url,
            licence=origin.get("licence") or source.origin.licence,
            licence_name=origin.get("licence_name") or source.origin.licence_name,
            licence_url=origin.get("licence_url") or source.origin.licence_url,
            retrieved=origin.get("retrieved", "unknown"),
            sha256=origin.get("sha256", ""),
            data_as_of=origin.get("data_as_of", ""),
        )
    for name in dataset.upstream_datasets:
        for record in read_source_records(snapshot_dir, lookup[name], lookup):
            records.setdefault(record.name, record)
    return sorted(records.values(), key=lambda record: record.name)


def describe_publication(publication: Publication) -> str:
    """Say in one line where a release went and what changed, for the run's log."""
    local = "updated" if publication.local_changed else "unchanged"
    text = f"local release {publication.release} {local}"
    push = publication.hub
    if push is None:
        return text
    if push.commit_url is None:
        return f"{text}; {push.repo_id} already holds every file, so no commit was made"
    return f"{text}; committed {', '.join(push.uploaded)} to {push.repo_id}: {push.commit_url}"


def publication_metadata(publication: Publication, rows: int) -> dict[str, Any]:
    """Describe a release in the publish asset's materialization."""
    push = publication.hub
    metadata: dict[str, Any] = {
        "dagster/row_count": rows,
        "updated": publication.updated,
        "local_release": dg.MetadataValue.path(str(publication.release)),
        "local_changed": publication.local_changed,
        "file_bytes": dg.MetadataValue.json(publication.files),
    }
    if push is None:
        metadata["dagster/uri"] = dg.MetadataValue.path(str(publication.release))
        metadata["destination"] = "local folder (HF_TOKEN is not set)"
        metadata["changed"] = publication.local_changed
        return metadata

    metadata["dagster/uri"] = dg.MetadataValue.url(push.page)
    metadata["destination"] = f"HuggingFace dataset {push.repo_id}"
    metadata["changed"] = push.commit_url is not None
    metadata["uploaded"] = dg.MetadataValue.json(push.uploaded)
    if push.commit_url is None:
        metadata["commit"] = f"none: every file matches {push.repo_id} at {push.head}"
    else:
        metadata["commit"] = dg.MetadataValue.url(push.commit_url)
    return metadata
