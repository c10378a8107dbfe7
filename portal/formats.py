"""Parsing of downloaded files into raw Polars tables, one function per declared format.

A raw table keeps the values as the producer wrote them: text columns that a source does not
declare stay strings, and GeoJSON features are flattened without converting any value.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from portal.dataset import Source


class ParseError(ValueError):
    """A downloaded or committed file does not hold what its source declares."""


def parse_file(source: Source, path: Path) -> pl.DataFrame:
    """Read the file at `path` as `source` declares it, raising ParseError when it does not fit."""
    try:
        match source.format:
            case "csv":
                frame = read_csv(source, path)
            case "json":
                frame = read_json_records(path)
            case "geojson":
                frame = read_geojson(path)
            case "parquet":
                frame = pl.read_parquet(path)
    except ParseError:
        raise
    except (pl.exceptions.PolarsError, ValueError, OSError) as error:
        raise ParseError(f"{path} is not valid {source.format} for source {source.name!r}: {error}")
    if frame.height == 0:
        raise ParseError(f"{path} holds no rows for source {source.name!r}")
    return frame


def read_csv(source: Source, path: Path) -> pl.DataFrame:
    header = pl.read_csv(
        path, n_rows=0, separator=source.separator, encoding=source.encoding
    ).columns
    undeclared = {name: pl.String for name in header if name not in source.schema}
    unknown = [name for name in source.schema if name not in header]
    if unknown:
        raise ParseError(
            f"{path}: declared columns {unknown} of source {source.name!r} are not in the "
            f"file's header {header}; the producer may have renamed them"
        )
    return pl.read_csv(
        path,
        schema={name: source.schema.get(name) or undeclared[name] for name in header},
        separator=source.separator,
        encoding=source.encoding,
        null_values=[""],
    )


def read_json_records(path: Path) -> pl.DataFrame:
    records = json.loads(path.read_bytes())
    if not isinstance(records, list):
        raise ParseError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    return pl.DataFrame(records, infer_schema_length=None)


def read_geojson(path: Path) -> pl.DataFrame:
    """Flatten a FeatureCollection: `id`, every property, then the geometry's type and coordinates."""
    collection = json.loads(path.read_bytes())
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise ParseError(f"{path}: expected a GeoJSON FeatureCollection")

    rows = []
    for feature in collection.get("features", []):
        geometry = feature.get("geometry") or {}
        rows.append(
            {
                "id": feature.get("id"),
                **feature.get("properties", {}),
                "geometry_type": geometry.get("type"),
                "coordinates": geometry.get("coordinates"),
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)
