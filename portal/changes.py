"""Whether a run must rebuild the assets downstream of a source whose bytes did not change.

A raw asset whose download is unchanged yields no output, and Dagster then skips every step
that reads it. Dagster skips a step as soon as one of its inputs is missing. So an unchanged
source must still yield when a table downstream of it needs a rebuild for another reason: the
table was never built, a previous run failed before it, or it also reads a source that
changed. This module decides that from the Dagster instance's materialization records.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from portal.dataset import Source
from portal.fetch import Snapshot, SourceUnavailable, fetch
from portal.formats import ParseError
from portal.settings import Settings

DATA_VERSION_TAG = "dagster/data_version"

# Sources by name, and their snapshots by (run id, source name). Several raw steps may look
# at one source, and the cache lets this process download it once per run.
# NOTE: with the multiprocess executor each step has its own cache, so a source read by a
# join may be requested once per raw step of that join (conditional requests keep it cheap).
SOURCES: dict[str, Source] = {}
SNAPSHOTS: dict[tuple[str, str], Snapshot] = {}


def register(source: Source) -> None:
    SOURCES[source.name] = source


def fetch_once(context: dg.AssetExecutionContext, source: Source) -> Snapshot:
    """Fetch a source unless this process already did in this run, and return its snapshot."""
    for run_id, name in list(SNAPSHOTS):
        if run_id != context.run.run_id:
            del SNAPSHOTS[(run_id, name)]
    key = (context.run.run_id, source.name)
    if key not in SNAPSHOTS:
        SNAPSHOTS[key] = fetch(source, Settings.from_env())
    return SNAPSHOTS[key]


def data_version(snapshot: Snapshot) -> str:
    """Return the raw asset's data version: a digest of the file and of its origin record.

    The origin record is part of it because the published dataset card shows the record's
    retrieval time and licence, so a new record must reach the publish step too.
    """
    record = json.dumps(snapshot.origin, sort_keys=True)
    return hashlib.sha256(f"{snapshot.sha256}\n{record}".encode()).hexdigest()


def stored_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """Return the data version of the asset's latest materialization, or None."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    return (event.asset_materialization.tags or {}).get(DATA_VERSION_TAG)


def materialized_at(instance: dg.DagsterInstance, key: dg.AssetKey) -> float | None:
    event = instance.get_latest_materialization_event(key)
    return event.timestamp if event else None


def rebuild_reason(context: dg.AssetExecutionContext, version: str) -> str | None:
    """Return why this raw asset must yield its table in this run, or None to skip it.

    The result is None only when the table's stored data version equals `version` and no
    selected asset downstream of it needs a rebuild.
    """
    instance = context.instance
    graph = context.job_def.asset_layer.asset_graph
    own_key = context.asset_key
    if stored_version(instance, own_key) != version:
        return "its data changed since the last materialization"

    selected = set(context.run.asset_selection or graph.get_all_asset_keys())
    for descendant in sorted(descendants(graph, own_key) & selected):
        upstream = ancestors(graph, descendant) | {descendant}
        for key in sorted(upstream):
            parents = graph.get(key).parent_keys
            if parents and is_outdated(instance, key, parents):
                return f"{key.to_user_string()} is missing or older than one of its inputs"
        for key in sorted(upstream & selected):
            if key == own_key or graph.get(key).parent_keys:
                continue
            if source_changed(context, key):
                reader, other = descendant.to_user_string(), key.to_user_string()
                return f"{reader} also reads {other}, which changed"
    return None


def is_outdated(instance: dg.DagsterInstance, key: dg.AssetKey, parents: set) -> bool:
    built = materialized_at(instance, key)
    if built is None:
        return True
    return any((materialized_at(instance, parent) or 0) > built for parent in parents)


def source_changed(context: dg.AssetExecutionContext, key: dg.AssetKey) -> bool:
    """Fetch another raw asset's source and compare it with that asset's stored data version.

    A source that this process cannot fetch (not registered here, or with neither a download
    nor a readable snapshot) counts as changed, so the caller yields its table: the safe side.
    """
    source = SOURCES.get(key.path[-1])
    if source is None:
        return True
    try:
        snapshot = fetch_once(context, source)
    except (SourceUnavailable, ParseError):
        return True  # that source's own step reports the error
    return data_version(snapshot) != stored_version(context.instance, key)


def descendants(graph, key: dg.AssetKey) -> set[dg.AssetKey]:
    return reachable(graph, key, "child_keys")


def ancestors(graph, key: dg.AssetKey) -> set[dg.AssetKey]:
    return reachable(graph, key, "parent_keys")


def reachable(graph, key: dg.AssetKey, edges: str) -> set[dg.AssetKey]:
    """Return every asset reached from `key` along `edges` ("child_keys" or "parent_keys")."""
    found: set[dg.AssetKey] = set()
    pending = [key]
    while pending:
        for neighbour in getattr(graph.get(pending.pop()), edges):
            if neighbour not in found:
                found.add(neighbour)
                pending.append(neighbour)
    return found
