"""Downloading sources into committed snapshots, with the snapshot as the offline fallback.

A snapshot is the last good copy of a source: `data/snapshots/<source>/<source>.<format>` and
`origin.json` beside it (producer, URL, licence, retrieval time, sha256). A download replaces
it only after the new body parsed as the declared format, so a failed or broken download
leaves the snapshot as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import requests

from portal.dataset import Source
from portal.formats import ParseError, parse_file
from portal.settings import Settings

CHUNK_BYTES = 1 << 16


class SourceUnavailable(RuntimeError):
    """Neither a download nor a committed snapshot could provide a source."""


@dataclass(frozen=True)
class Snapshot:
    """A source's file on disk and what is known of where it came from."""

    path: Path
    origin: dict
    frame: pl.DataFrame
    used: str  # "live" when this run downloaded it, "snapshot" when it fell back
    reason: str = ""


def snapshot_folder(settings: Settings, source: Source) -> Path:
    return settings.snapshot_dir / source.name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_origin(folder: Path) -> dict:
    path = folder / "origin.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as stream:
        stream.write(text)
    os.replace(stream.name, path)


def origin_record(source: Source, url: str, path: Path, retrieved: str) -> dict:
    return {
        "source": source.name,
        "producer": source.origin.producer,
        "url": url,
        "licence": source.origin.licence,
        "licence_name": source.origin.licence_name,
        "licence_url": source.origin.licence_url,
        "homepage": source.origin.homepage,
        "format": source.format,
        "file": path.name,
        "retrieved": retrieved,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
    }


def download(url: str, target: Path, settings: Settings) -> None:
    """Stream `url` into `target`, raising requests' errors for failures and HTTP errors."""
    headers = {"User-Agent": settings.user_agent}
    timeout = (min(10.0, settings.fetch_timeout), settings.fetch_timeout)
    with requests.get(url, headers=headers, timeout=timeout, stream=True) as response:
        response.raise_for_status()
        with target.open("wb") as stream:
            for chunk in response.iter_content(CHUNK_BYTES):
                stream.write(chunk)


def fetch_live(source: Source, settings: Settings) -> Snapshot:
    """Download a source, check that it parses, and make it the new snapshot."""
    url = settings.source_url(source.name, source.url)
    folder = snapshot_folder(settings, source)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.snapshot_name

    partial = Path(tempfile.mkstemp(dir=folder, prefix=f".{source.snapshot_name}.")[1])
    try:
        download(url, partial, settings)
        frame = parse_file(source, partial)
        new_sha = sha256_of(partial)
        origin = read_origin(folder)
        if target.is_file() and origin.get("sha256") == new_sha and origin.get("url") == url:
            # Same bytes as the snapshot: keep the file and its record untouched, so a repository
            # that commits snapshots sees no change.
            return Snapshot(target, origin, frame, used="live", reason="unchanged")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)

    retrieved = datetime.now(UTC).replace(microsecond=0).isoformat()
    origin = origin_record(source, url, target, retrieved)
    write_atomically(folder / "origin.json", json.dumps(origin, indent=2) + "\n")
    return Snapshot(target, origin, frame, used="live", reason="changed")


def read_snapshot(source: Source, settings: Settings, reason: str) -> Snapshot:
    folder = snapshot_folder(settings, source)
    path = folder / source.snapshot_name
    if not path.is_file():
        raise SourceUnavailable(
            f"source {source.name!r}: {reason}, and there is no snapshot at {path} to fall back "
            f"on. Check the URL ({source.url}) or commit a snapshot there."
        )
    return Snapshot(path, read_origin(folder), parse_file(source, path), "snapshot", reason)


def fetch(source: Source, settings: Settings) -> Snapshot:
    """Return the source's newest good copy: a fresh download, else the committed snapshot."""
    if settings.offline:
        return read_snapshot(source, settings, "offline mode is on (PORTAL_OFFLINE)")

    url = settings.source_url(source.name, source.url)
    try:
        return fetch_live(source, settings)
    except (requests.RequestException, ParseError) as error:
        return read_snapshot(source, settings, f"download of {url} failed: {error}")
