"""`.env.example` against the code: every variable the portal reads, with the code's default."""

from __future__ import annotations

import os
import re

import pytest

from portal.datasets import load_datasets
from portal.settings import PROJECT_ROOT, HubSettings, Settings, source_url_variable

ENV_EXAMPLE = PROJECT_ROOT / ".env.example"


def example_values() -> dict[str, str]:
    """Return the `NAME=value` lines of `.env.example`."""
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    matches = [re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line) for line in lines]
    return {match[1]: match[2] for match in matches if match}


def variables_read() -> set[str]:
    """Return every PORTAL_* and HF_* name that the portal's code spells out in a string."""
    names: set[str] = set()
    for path in (PROJECT_ROOT / "portal").rglob("*.py"):
        names |= set(re.findall(r'"((?:PORTAL|HF)_[A-Z0-9_]+)"', path.read_text(encoding="utf-8")))
    return names


def test_example_lists_every_variable():
    # PORTAL_ENV_FILE names the file itself, so .env.example can only describe it.
    listed = set(example_values()) | {"PORTAL_ENV_FILE"}

    assert variables_read() - listed == set()
    assert "PORTAL_ENV_FILE" in ENV_EXAMPLE.read_text(encoding="utf-8")


def test_example_lists_source_urls():
    values = example_values()
    for dataset in load_datasets():
        for source in dataset.sources:
            assert values.get(source_url_variable(source.name)) == source.url, source.name


def test_example_values_are_defaults(monkeypatch: pytest.MonkeyPatch):
    # load_dotenv writes into os.environ, so each case works on a copy that the test drops.
    variables = variables_read() | set(example_values())
    clean = {name: value for name, value in os.environ.items() if name not in variables}

    monkeypatch.setattr(os, "environ", {**clean, "PORTAL_ENV_FILE": ""})
    defaults = (Settings.from_env(), HubSettings.from_env())
    monkeypatch.setattr(os, "environ", {**clean, "PORTAL_ENV_FILE": str(ENV_EXAMPLE)})
    from_example = (Settings.from_env(), HubSettings.from_env())

    assert from_example == defaults


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORTAL_FETCH_TIMEOUT", "30s", "PORTAL_FETCH_TIMEOUT='30s' is not a number"),
        ("PORTAL_FETCH_RETRIES", "2.5", "PORTAL_FETCH_RETRIES='2.5' is not a whole number"),
        ("PORTAL_SNAPSHOT_HISTORY", "ten", "PORTAL_SNAPSHOT_HISTORY='ten' is not a whole number"),
    ],
)
def test_invalid_number_names_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
):
    monkeypatch.setenv(name, value)

    with pytest.raises(ValueError) as raised:
        Settings.from_env()

    assert expected in str(raised.value)
