"""Downloading sources into committed snapshots, with the snapshot as the offline fallback.

A snapshot is the last good copy of a source: `data/snapshots/<source>/<source>.<format>` and
`origin.json` beside it (producer, URL, licence, retrieval time, sha256, and the ETag and
Last-Modified validators of the response). Each changed download is also kept as a dated copy
in `history/`, so a repository that commits `data/snapshots/` records every version it saw.

A download is polite and careful: it names the portal in its User-Agent, pauses between
requests to one host, requests only a changed body (If-None-Match, If-Modified-Since), retries
connection errors, 429 and 5xx answers with exponential backoff (urllib3's Retry) and restarts
a body that breaks off. The body streams to a temporary file that replaces the snapshot only
after its size, type and contents are checked, so a bad response never replaces a good copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NameResolutionError, ResponseError
from urllib3.util.retry import Retry

from portal.dataset import Source
from portal.formats import SNIFF_BYTES, ColumnsMissing, ParseError, parse_file, sniff
from portal.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
PROGRESS_SECONDS = 5.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class FetchError(RuntimeError):
    """A download failed or its body is not the file the source declares.

    `downloaded` is true when the body arrived whole and only its contents are wrong.
    """

    def __init__(self, source: Source, url: str, detail: str, *, downloaded: bool = False) -> None:
        what = f"{url} was downloaded, but" if downloaded else f"download of {url} failed:"
        super().__init__(f"source {source.name!r}: {what} {detail}")


class SourceUnavailable(RuntimeError):
    """Neither a download nor a committed snapshot could provide a source."""


@dataclass(frozen=True)
class Snapshot:
    """A source's file on disk and what is known of where it came from.

    `used` is "live" when this run reached the URL and "snapshot" when it fell back on the
    stored copy. `changed` is True only when this run stored a new version. `sha256` is the
    digest of the file itself, which differs from the origin record's if someone edited it.
    `offline` is True when offline mode chose the stored copy, so no download was tried.
    """

    path: Path
    origin: dict
    frame: pl.DataFrame
    used: str
    reason: str
    sha256: str
    changed: bool = False
    offline: bool = False

    @property
    def log_level(self) -> int:
        """WARNING when a failed download left the stored copy in use, else INFO."""
        return logging.WARNING if self.used == "snapshot" and not self.offline else logging.INFO


@dataclass(frozen=True)
class Reply:
    """The outcome of a download: a new body in a temporary file, or 304 Not Modified."""

    status: int
    etag: str = ""
    last_modified: str = ""
    content_type: str = ""
    raw_bytes: int = 0


class DeadlinePassed(Exception):
    """The overall time allowed for one download ran out."""


class HostPacer:
    """Keeps a minimum pause between the starts of two requests to one host, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_start: dict[str, float] = {}

    def wait(self, host: str, pause: float) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start.get(host, now))
            self.next_start[host] = start + pause
        if start > now:
            time.sleep(start - now)


PACER = HostPacer()


class PoliteRetry(Retry):
    """urllib3's Retry, except that a host name that does not resolve fails at once (offline),
    every retry is logged, and no pause runs past the download's deadline."""

    def __init__(self, *args, deadline: float = float("inf"), label: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.label = label

    def new(self, **kwargs) -> PoliteRetry:
        retry = super().new(**kwargs)
        retry.deadline = self.deadline
        retry.label = self.label
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None) -> PoliteRetry:  # fmt: skip
        if isinstance(error, NameResolutionError):
            raise MaxRetryError(_pool, url, error) from error
        if time.monotonic() > self.deadline:
            cause = f"HTTP {response.status}" if response else describe(error)
            raise DeadlinePassed(f"no retry after {cause}")
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response=None) -> None:
        pause = (self.get_retry_after(response) if response else None) or self.get_backoff_time()
        if time.monotonic() + pause > self.deadline:
            raise DeadlinePassed(f"a retry pause of {pause:.1f} s would pass the deadline")
        last = self.history[-1] if self.history else None
        cause = f"HTTP {last.status}" if last and last.status else describe(last and last.error)
        log.warning("%s: retrying in %.1f s after %s", self.label, pause, cause)
        super().sleep(response)


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
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
        encoding="utf-8",
    ) as stream:  # fmt: skip
        stream.write(text)
    os.replace(stream.name, path)


def describe(error: BaseException | None) -> str:
    """Return a one-line account of a download error, without urllib3's nested reprs."""
    while error is not None:
        if isinstance(error, NameResolutionError):
            return f"host name {error.conn.host} could not be resolved (offline?)"
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x, so it goes first.
        if isinstance(error, urllib3.exceptions.NewConnectionError):
            reason = str(error).rsplit(": ", 1)[-1]
            return f"could not connect to {error.conn.host}:{error.conn.port} ({reason})"
        if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
            return "the connection timed out"
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            return "the server sent nothing within the read timeout"
        if isinstance(error, ResponseError):
            return str(error).replace("too many ", "still ").replace(" error responses", "") + (
                " after every retry"
            )
        if isinstance(error, urllib3.exceptions.ProtocolError) and error.args[1:]:
            return f"the connection broke: {error.args[1]}"
        if isinstance(error, MaxRetryError):
            error = error.reason
            continue
        if isinstance(error, requests.RequestException) and error.args:
            inner = error.args[0]
            if isinstance(inner, BaseException):
                error = inner
                continue
        return str(error) or type(error).__name__
    return "unknown error"


def open_session(settings: Settings, deadline: float, label: str) -> requests.Session:
    retry = PoliteRetry(
        total=settings.fetch_retries,
        connect=settings.fetch_retries,
        read=settings.fetch_retries,
        status=settings.fetch_retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods={"GET"},
        backoff_factor=settings.retry_backoff,
        backoff_max=settings.retry_max_wait,
        retry_after_max=settings.retry_max_wait,
        respect_retry_after_header=True,
        raise_on_status=False,
        deadline=deadline,
        label=label,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = settings.user_agent
    return session


def download(
    source: Source, url: str, target: Path, settings: Settings, validators: dict[str, str]
) -> Reply:
    """Download `url` into `target`, retrying a body that breaks off, and check what arrived.

    Raises FetchError naming the source and URL for every failure. `validators` are the
    conditional request headers; on 304 Not Modified `target` is left empty.
    """
    deadline = time.monotonic() + settings.download_deadline
    host = urlsplit(url).hostname or ""
    attempts = settings.fetch_retries + 1
    with open_session(settings, deadline, f"source {source.name}, {url}") as session:
        for attempt in range(1, attempts + 1):
            PACER.wait(host, settings.host_pause)
            try:
                return download_once(source, url, target, settings, session, validators, deadline)
            except BodyBroken as error:
                # The same schedule as urllib3's Retry: 0, then 2x, 4x, 8x... the factor.
                backoff = 0.0 if attempt == 1 else settings.retry_backoff * 2 ** (attempt - 1)
                pause = min(backoff, settings.retry_max_wait)
                if attempt == attempts or time.monotonic() + pause > deadline:
                    raise FetchError(source, url, f"{error} (tried {attempt} times)") from error
                log.warning(
                    "source %s, %s: %s; downloading again in %.1f s (try %d of %d)",
                    source.name, url, error, pause, attempt + 1, attempts,
                )  # fmt: skip
                time.sleep(pause)
    raise AssertionError("unreachable")


class BodyBroken(Exception):
    """The response started well but its body did not arrive whole; worth another try."""


def download_once(
    source: Source,
    url: str,
    target: Path,
    settings: Settings,
    session: requests.Session,
    validators: dict[str, str],
    deadline: float,
) -> Reply:
    timeout = (settings.connect_timeout, settings.fetch_timeout)
    try:
        response = session.get(url, headers=validators, timeout=timeout, stream=True)
    except DeadlinePassed as error:
        raise FetchError(source, url, f"the download deadline passed: {error}") from error
    except requests.RequestException as error:
        raise FetchError(source, url, describe(error)) from error

    with response:
        content_type = response.headers.get("Content-Type", "")
        reply = Reply(
            status=response.status_code,
            etag=response.headers.get("ETag", ""),
            last_modified=response.headers.get("Last-Modified", ""),
            content_type=content_type,
        )
        if response.status_code == 304:
            return reply
        if response.status_code != 200:
            reason = response.reason or "error"
            raise FetchError(
                source, url, f"the server returned HTTP {response.status_code} {reason}"
            )
        raw_bytes = stream_body(source, url, response, target, deadline)

    if raw_bytes == 0 or target.stat().st_size == 0:
        raise FetchError(source, url, "the body is empty")
    with target.open("rb") as stream:
        problem = sniff(source, stream.read(SNIFF_BYTES), content_type)
    if problem:
        raise FetchError(source, url, f"the body is not {source.format.upper()}: {problem}")
    return Reply(reply.status, reply.etag, reply.last_modified, content_type, raw_bytes)


def stream_body(
    source: Source, url: str, response: requests.Response, target: Path, deadline: float
) -> int:
    """Write the decoded body to `target` chunk by chunk; return the bytes received on the wire.

    The Content-Length check counts the bytes before decoding, so a gzip-encoded body is
    compared with the length the server declared for it.
    """
    declared = response.headers.get("Content-Length", "")
    expected = int(declared) if declared.isdigit() else None
    next_report = time.monotonic() + PROGRESS_SECONDS
    with target.open("wb") as stream:
        while chunk := read_chunk(response, expected):
            stream.write(chunk)
            now = time.monotonic()
            if now > deadline:
                raise FetchError(
                    source, url, f"the download deadline passed after {response.raw.tell():,} bytes"
                )
            if now >= next_report:
                log_progress(source, url, response.raw.tell(), expected)
                next_report = now + PROGRESS_SECONDS
    received = response.raw.tell()
    if expected is not None and received != expected:
        raise BodyBroken(f"the body broke off after {received:,} of {expected:,} bytes")
    return received


def read_chunk(response: requests.Response, expected: int | None) -> bytes:
    """Return the next decoded piece of the body, as soon as any arrives; b"" at its end."""
    try:
        return response.raw.read1(CHUNK_BYTES, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        received = f"{response.raw.tell():,}" + (f" of {expected:,}" if expected else "")
        cause = describe(error)
        if isinstance(error, urllib3.exceptions.ProtocolError):
            cause = "the connection closed early"
        raise BodyBroken(f"the body broke off after {received} bytes: {cause}") from error


def log_progress(source: Source, url: str, received: int, expected: int | None) -> None:
    if expected:
        log.info(
            "source %s: %.1f of %.1f MB (%d%%) from %s",
            source.name, received / 1e6, expected / 1e6, 100 * received // expected, url,
        )  # fmt: skip
    else:
        log.info("source %s: %.1f MB so far from %s", source.name, received / 1e6, url)


def conditional_headers(origin: dict, current: Path, url: str) -> dict[str, str]:
    """Return If-None-Match / If-Modified-Since for the stored copy, if it is intact."""
    if origin.get("url") != url or not current.is_file():
        return {}
    if origin.get("sha256") != sha256_of(current):
        return {}
    headers = {}
    if origin.get("etag"):
        headers["If-None-Match"] = origin["etag"]
    if origin.get("last_modified"):
        headers["If-Modified-Since"] = origin["last_modified"]
    return headers


def origin_record(source: Source, url: str, path: Path, retrieved: str, reply: Reply) -> dict:
    record = {
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
    validators = {
        "etag": reply.etag,
        "last_modified": reply.last_modified,
        "content_type": reply.content_type,
    }
    return record | {key: value for key, value in validators.items() if value}


def fetch_live(source: Source, settings: Settings) -> Snapshot:
    """Download a source, check it, and make it the new snapshot if its bytes changed.

    Raises FetchError, leaving the stored snapshot untouched, when the download fails or the
    body does not parse as the declared format.
    """
    url = settings.source_url(source.name, source.url)
    folder = snapshot_folder(settings, source)
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / source.snapshot_name
    origin = read_origin(folder)

    handle, name = tempfile.mkstemp(dir=folder, prefix=f".{source.snapshot_name}.", suffix=".tmp")
    os.close(handle)
    partial = Path(name)
    try:
        reply = download(source, url, partial, settings, conditional_headers(origin, current, url))
        if reply.status == 304:
            frame = parse_file(source, current)
            reason = "not modified (HTTP 304)"
            return Snapshot(current, origin, frame, "live", reason, origin["sha256"])
        try:
            frame = parse_file(source, partial)
        except ColumnsMissing as error:
            raise FetchError(source, url, error.detail, downloaded=True) from error
        except ParseError as error:
            raise FetchError(source, url, str(error).replace(str(partial), "the body")) from error
        digest = sha256_of(partial)
        if current.is_file() and origin.get("url") == url and origin.get("sha256") == digest:
            origin = refresh_validators(folder, origin, reply)
            return Snapshot(current, origin, frame, "live", "unchanged (same sha256)", digest)
        os.replace(partial, current)
    finally:
        partial.unlink(missing_ok=True)

    retrieved = datetime.now(UTC).replace(microsecond=0).isoformat()
    origin = origin_record(source, url, current, retrieved, reply)
    write_atomically(folder / "origin.json", json.dumps(origin, indent=2) + "\n")
    keep_history(source, settings, folder, origin)
    return Snapshot(current, origin, frame, "live", "changed", origin["sha256"], changed=True)


def refresh_validators(folder: Path, origin: dict, reply: Reply) -> dict:
    """Store new validators for unchanged bytes, so the next request can be conditional."""
    fresh = {"etag": reply.etag, "last_modified": reply.last_modified}
    if all(origin.get(key, "") == value for key, value in fresh.items()):
        return origin
    origin = origin | {key: value for key, value in fresh.items() if value}
    write_atomically(folder / "origin.json", json.dumps(origin, indent=2) + "\n")
    return origin


def keep_history(source: Source, settings: Settings, folder: Path, origin: dict) -> None:
    """Copy the new snapshot and its origin into `history/`, then drop copies beyond the limit."""
    limit = source.history if source.history is not None else settings.snapshot_history
    history = folder / "history"
    if limit != 0:
        history.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        copy = history / f"{stamp}.{source.format}"
        shutil.copyfile(folder / source.snapshot_name, copy)
        write_atomically(history / f"{stamp}.origin.json", json.dumps(origin, indent=2) + "\n")
    if limit is None or not history.is_dir():
        return
    records = sorted(history.glob("*.origin.json"))
    for record in records[: max(0, len(records) - limit)]:
        stamp = record.name.removesuffix(".origin.json")
        (history / f"{stamp}.{source.format}").unlink(missing_ok=True)
        record.unlink()


def read_snapshot(source: Source, settings: Settings, reason: str) -> Snapshot:
    folder = snapshot_folder(settings, source)
    path = folder / source.snapshot_name
    url = settings.source_url(source.name, source.url)
    if not path.is_file():
        if settings.offline:
            advice = (
                f"Run once without PORTAL_OFFLINE=1, with network access, to download {url} "
                "there, or commit a snapshot there."
            )
        else:
            advice = f"Check the URL ({url}) or commit a snapshot there."
        raise SourceUnavailable(
            f"{reason}; there is no snapshot at {path} to fall back on. {advice}"
        )
    frame = parse_file(source, path)
    origin = read_origin(folder)
    offline = settings.offline
    return Snapshot(path, origin, frame, "snapshot", reason, sha256_of(path), offline=offline)


def fetch(source: Source, settings: Settings) -> Snapshot:
    """Return the source's newest good copy: a fresh download, else the stored snapshot."""
    if settings.offline:
        return read_snapshot(
            source, settings, f"source {source.name!r}: offline mode is on (PORTAL_OFFLINE)"
        )
    try:
        return fetch_live(source, settings)
    except FetchError as error:
        return read_snapshot(source, settings, str(error))
