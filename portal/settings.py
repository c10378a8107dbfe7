"""Runtime settings, read from environment variables (and a `.env` file at the project root).

Every variable the portal reads is listed in `.env.example` with its default. Settings are read
when a run starts, not at import, so tests and CI can point a run at other folders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TRUE_WORDS = {"1", "true", "yes", "on"}


def load_dotenv(path: Path | None = None) -> None:
    """Copy `KEY=value` lines from the `.env` file into the environment, unless already set.

    The file is `PORTAL_ENV_FILE` when that variable is set (empty turns the file off, as the
    tests do), else `.env` at the project root.
    """
    if path is None:
        chosen = os.environ.get("PORTAL_ENV_FILE")
        if chosen == "":
            return
        path = Path(chosen) if chosen else PROJECT_ROOT / ".env"
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.removeprefix("export ").strip()
        value = value.strip().strip("'\"")
        os.environ.setdefault(key, value)


def source_url_variable(source_name: str) -> str:
    """Return the environment variable that overrides a source's URL, e.g. `PORTAL_WEATHER_URL`."""
    return f"PORTAL_{source_name.upper()}_URL"


def number(env: Mapping[str, str], name: str, default: str, kind: type[float] | type[int]):
    """Read a numeric variable, naming it and its value when it is not a number."""
    text = env.get(name, default)
    try:
        return kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}={text!r} is not {expected}; see .env.example") from None


def optional_int(env: Mapping[str, str], name: str) -> int | None:
    """Read an optional whole number: an empty or missing value means no limit."""
    if not env.get(name, "").strip():
        return None
    return number(env, name, "", int)


@dataclass(frozen=True)
class Settings:
    snapshot_dir: Path
    publish_dir: Path
    warehouse: str
    offline: bool
    executor: str
    lock_timeout: float
    fetch_timeout: float
    connect_timeout: float
    download_deadline: float
    fetch_retries: int
    retry_backoff: float
    retry_max_wait: float
    host_pause: float
    snapshot_history: int | None
    user_agent: str
    max_row_drop: float

    @classmethod
    def from_env(cls) -> Settings:
        load_dotenv()
        env = os.environ
        data_dir = Path(env.get("PORTAL_DATA_DIR") or PROJECT_ROOT / "data").resolve()
        contact = env.get("PORTAL_CONTACT_URL", "https://github.com/")
        return cls(
            snapshot_dir=Path(env.get("PORTAL_SNAPSHOT_DIR") or data_dir / "snapshots").resolve(),
            publish_dir=Path(env.get("PORTAL_PUBLISH_DIR") or data_dir / "publish").resolve(),
            warehouse=env.get("PORTAL_WAREHOUSE") or str(data_dir / "warehouse.duckdb"),
            offline=env.get("PORTAL_OFFLINE", "").strip().lower() in TRUE_WORDS,
            executor=env.get("PORTAL_EXECUTOR", "in_process"),
            lock_timeout=number(env, "PORTAL_LOCK_TIMEOUT", "120", float),
            fetch_timeout=number(env, "PORTAL_FETCH_TIMEOUT", "30", float),
            connect_timeout=number(env, "PORTAL_CONNECT_TIMEOUT", "10", float),
            download_deadline=number(env, "PORTAL_DOWNLOAD_DEADLINE", "900", float),
            fetch_retries=number(env, "PORTAL_FETCH_RETRIES", "4", int),
            retry_backoff=number(env, "PORTAL_RETRY_BACKOFF", "1", float),
            retry_max_wait=number(env, "PORTAL_RETRY_MAX_WAIT", "60", float),
            host_pause=number(env, "PORTAL_HOST_PAUSE", "1", float),
            snapshot_history=optional_int(env, "PORTAL_SNAPSHOT_HISTORY"),
            user_agent=f"barefoot-data-portal/0.1 (+{contact})",
            max_row_drop=number(env, "PORTAL_MAX_ROW_DROP", "0.5", float),
        )

    def source_url(self, source_name: str, declared_url: str) -> str:
        """Return the URL to fetch for a source: its environment override, else the declared one."""
        return os.environ.get(source_url_variable(source_name)) or declared_url


@dataclass(frozen=True)
class HubSettings:
    """Where and how releases go to HuggingFace. The token is not here: the publisher reads
    HF_TOKEN from the environment when it pushes, so no setting object ever contains it."""

    endpoint: str
    organisation: str
    private: bool
    attempts: int
    retry_pause: float
    max_pause: float

    @classmethod
    def from_env(cls) -> HubSettings:
        load_dotenv()
        env = os.environ
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
            organisation=env.get("PORTAL_HF_ORG", "").strip(),
            private=env.get("PORTAL_HF_PRIVATE", "").strip().lower() in TRUE_WORDS,
            attempts=max(1, number(env, "PORTAL_HF_ATTEMPTS", "4", int)),
            retry_pause=number(env, "PORTAL_HF_RETRY_PAUSE", "2", float),
            max_pause=number(env, "PORTAL_HF_MAX_PAUSE", "60", float),
        )
