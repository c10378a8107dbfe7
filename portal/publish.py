"""Publishing finished datasets as a release folder: zstd Parquet and a dataset card.

A release of dataset `weather` is `data/publish/weather/` with `weather.parquet` and
`README.md`. The card is built with huggingface_hub's card classes, so the same file is valid
on the HuggingFace Hub. A new release is written beside the old one and swapped in only when
complete, so a failed publish leaves the last good release as it was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from huggingface_hub import DatasetCard, DatasetCardData

from portal.dataset import Dataset

SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
]


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


def size_category(rows: int) -> str:
    for limit, label in SIZE_CATEGORIES:
        if rows < limit:
            return label
    return "n>100M"


def card_licence(sources: list[SourceRecord]) -> str | list[str]:
    licences = sorted({source.licence for source in sources}) or ["unknown"]
    return licences[0] if len(licences) == 1 else licences


def render_card(
    dataset: Dataset, frame: pl.DataFrame, sources: list[SourceRecord], lineage: list[str]
) -> DatasetCard:
    """Build the dataset card: a Hub-valid YAML header and a body a reader can act on."""
    other = [source for source in sources if source.licence == "other"]
    card_data = DatasetCardData(
        license=card_licence(sources),
        pretty_name=dataset.title,
        size_categories=[size_category(frame.height)],
        tags=list(dataset.tags),
        configs=[{"config_name": "default", "data_files": f"{dataset.name}.parquet"}],
    )
    if other:
        # The Hub reads these two keys for a licence outside its list.
        card_data.license_name = "; ".join(sorted({source.licence_name for source in other}))
        card_data.license_link = other[0].licence_url

    rows = "\n".join(
        f"| `{column.name}` | {frame.schema[column.name]} | {column.unit or ''} "
        f"| {column.description} |"
        for column in dataset.columns
    )
    source_lines = "\n".join(
        f"- **{source.name}**: {source.producer}, <{source.url}>, licence "
        f"[{source.licence_name}]({source.licence_url}), retrieved {source.retrieved} "
        f"(sha256 `{source.sha256[:12]}…`)"
        for source in sources
    )
    updated = datetime.now(UTC).replace(microsecond=0).isoformat()
    body = f"""
# {dataset.title}

{dataset.description.strip()}

- Rows: {frame.height:,}
- Updated: {updated}
- File: `{dataset.name}.parquet` (Parquet, zstd)

## Columns

| column | type | unit | description |
|---|---|---|---|
{rows}

## Sources

{source_lines}

## Lineage

{" → ".join(lineage)}

Built by a barefoot data portal: every step from download to this file is a Dagster asset.
"""
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def write_release(
    publish_dir: Path, dataset: Dataset, frame: pl.DataFrame, card: DatasetCard
) -> Path:
    """Write a complete release folder, then swap it in place of the previous one."""
    publish_dir.mkdir(parents=True, exist_ok=True)
    release = publish_dir / dataset.name
    staging = Path(tempfile.mkdtemp(dir=publish_dir, prefix=f".{dataset.name}.new-"))
    try:
        frame.write_parquet(staging / f"{dataset.name}.parquet", compression="zstd")
        (staging / "README.md").write_text(str(card), encoding="utf-8")
        if release.exists():
            retired = publish_dir / f".{dataset.name}.old"
            shutil.rmtree(retired, ignore_errors=True)
            release.rename(retired)
            staging.rename(release)
            shutil.rmtree(retired)
        else:
            staging.rename(release)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return release


def read_source_records(snapshot_dir: Path, dataset: Dataset, lookup: dict) -> list[SourceRecord]:
    """Collect origin records of every source behind `dataset`, following joins to their inputs."""
    records: dict[str, SourceRecord] = {}
    for source in dataset.sources:
        origin_path = snapshot_dir / source.name / "origin.json"
        origin = json.loads(origin_path.read_text(encoding="utf-8")) if origin_path.is_file() else {}
        records[source.name] = SourceRecord(
            name=source.name,
            producer=source.origin.producer,
            url=origin.get("url", source.url),
            licence=source.origin.licence,
            licence_name=source.origin.licence_name,
            licence_url=source.origin.licence_url,
            retrieved=origin.get("retrieved", "unknown"),
            sha256=origin.get("sha256", ""),
        )
    for name in dataset.upstream_datasets:
        for record in read_source_records(snapshot_dir, lookup[name], lookup):
            records.setdefault(record.name, record)
    return list(records.values())
