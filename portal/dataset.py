"""The dataset declaration: what a module under `portal/datasets/` writes to add a dataset.

A `Dataset` names its inputs (raw `Source`s downloaded from the web, or other datasets by name),
its columns and a plain Polars function from the inputs to the finished table. The framework
derives the Dagster assets, the warehouse tables and the published files from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import polars as pl

FORMATS = ("csv", "json", "geojson", "parquet")


@dataclass(frozen=True)
class Origin:
    """Who produces a source and under which licence it may be reused.

    `licence` is an identifier that the HuggingFace Hub recognises (`cc-by-4.0`, `cc0-1.0`,
    `odbl`...), or `other` for a licence outside that list, described by `licence_name` and
    `licence_url`.
    """

    producer: str
    licence: str
    licence_name: str
    licence_url: str
    homepage: str = ""


@dataclass(frozen=True)
class Source:
    """A public file or API response that the portal downloads and keeps a snapshot of.

    `name` becomes the raw table `raw.<name>` and the snapshot folder `data/snapshots/<name>/`.
    `schema` declares column types for text formats; columns it does not name are read as
    strings, so a type never depends on guessing from the first rows. `max_age` is how old the
    data may be before its freshness check warns; a source whose `max_age` is one day or less
    is also downloaded every hour by the refresh schedules, every other source once a day.

    The CSV dialect: `encoding` is a Python codec name, or `auto` to read UTF-8 and fall back
    to Latin-1 when the bytes are not valid UTF-8 (a UTF-8 byte order mark is dropped either
    way). `thousands` is the digit-group separator removed from declared numeric columns
    (`","` reads `2,288` as 2288), `decimal_comma` reads `3,5` as 3.5, and `null_values` are
    the cells read as missing. `history` keeps only that many dated copies of past downloads
    for this source, overriding PORTAL_SNAPSHOT_HISTORY.
    """

    name: str
    url: str
    format: str
    origin: Origin
    description: str = ""
    schema: dict[str, pl.DataType | type[pl.DataType]] = field(default_factory=dict)
    encoding: str = "utf-8"
    separator: str = ","
    quote_char: str | None = '"'
    thousands: str = ""
    decimal_comma: bool = False
    null_values: Sequence[str] = ("",)
    history: int | None = None
    max_age: timedelta | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(
                f"source {self.name!r}: format {self.format!r} is not one of {', '.join(FORMATS)}"
            )

    @property
    def snapshot_name(self) -> str:
        """File name of the committed snapshot, e.g. `weather.csv`."""
        return f"{self.name}.{self.format}"


@dataclass(frozen=True)
class Column:
    """One column of a finished table: its type, meaning and the rules its values follow."""

    name: str
    dtype: pl.DataType | type[pl.DataType]
    description: str
    unit: str = ""
    nullable: bool = True
    unique: bool = False
    allowed: Sequence[Any] | None = None
    min: Any = None
    max: Any = None

    @property
    def description_with_unit(self) -> str:
        """The description with the unit in brackets, e.g. `Total precipitation (mm)`."""
        return f"{self.description} ({self.unit})" if self.unit else self.description


@dataclass(frozen=True)
class Accumulate:
    """Keep the rows of earlier runs: each run's rows are merged into the stored table.

    A row whose `key` is already stored replaces the stored row when its `latest_by` value is
    newer or equal, so a revised record wins and nothing is duplicated.
    """

    key: Sequence[str]
    latest_by: str

    def merge(self, stored: pl.DataFrame | None, fresh: pl.DataFrame) -> pl.DataFrame:
        if stored is None or stored.is_empty():
            combined = fresh
        else:
            # Stored rows keep only today's columns, and get nulls in columns added since.
            kept = stored.select(name for name in fresh.columns if name in stored.columns)
            combined = pl.concat([kept, fresh], how="diagonal_relaxed").select(fresh.columns)
        # Fresh rows come last, so among equal `latest_by` values the fresh row is kept.
        return (
            combined.with_row_index("_arrival")
            .sort([self.latest_by, "_arrival"], nulls_last=False)
            .unique(subset=list(self.key), keep="last", maintain_order=True)
            .drop("_arrival")
        )


@dataclass(frozen=True)
class Dataset:
    """A finished table: its inputs, its columns and the function that builds it.

    `inputs` contains `Source`s (raw downloads) and names of other datasets (for joins). `build`
    is called with one Polars DataFrame per input, as keyword arguments named after the
    source or dataset, and returns the finished DataFrame. With `accumulate` set, the table
    keeps the rows of earlier runs (see `Accumulate`).
    """

    name: str
    title: str
    description: str
    inputs: Sequence[Source | str]
    columns: Sequence[Column]
    build: Callable[..., pl.DataFrame]
    key: Sequence[str] = ()
    publish: bool = True
    tags: Sequence[str] = ()
    accumulate: Accumulate | None = None

    def __post_init__(self) -> None:
        self.check_key()
        parameters = inspect.signature(self.build).parameters.values()
        if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
            return
        names = [parameter.name for parameter in parameters]
        if sorted(names) != sorted(self.input_names):
            raise TypeError(
                f"dataset {self.name!r}: build() takes the parameters {names}, but its inputs "
                f"are named {self.input_names}. Name each parameter after one input, a "
                "source's name or another dataset's name, because build() is called with "
                "one DataFrame per input under that name."
            )

    def check_key(self) -> None:
        """Reject a key over undeclared or nullable columns: a primary key has no nulls."""
        columns = {column.name: column for column in self.columns}
        undeclared = [name for name in self.key if name not in columns]
        nullable = [name for name in self.key if name in columns and columns[name].nullable]
        if undeclared or nullable:
            raise ValueError(
                f"dataset {self.name!r}: key {list(self.key)} has undeclared columns "
                f"{undeclared or 'none'} and nullable columns {nullable or 'none'}. Declare "
                "each key column with nullable=False."
            )

    @property
    def sources(self) -> list[Source]:
        return [item for item in self.inputs if isinstance(item, Source)]

    @property
    def upstream_datasets(self) -> list[str]:
        return [item for item in self.inputs if isinstance(item, str)]

    @property
    def input_names(self) -> list[str]:
        return [item.name if isinstance(item, Source) else item for item in self.inputs]

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({column.name: column.dtype for column in self.columns})

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Return `frame` with exactly the declared columns, in order and with the declared types.

        Raises ValueError naming the missing or undeclared columns, so a changed cleaning
        function or upstream file fails here instead of publishing a different table.
        """
        declared = [column.name for column in self.columns]
        missing = [name for name in declared if name not in frame.columns]
        extra = [name for name in frame.columns if name not in declared]
        if missing or extra:
            raise ValueError(
                f"dataset {self.name!r}: the build function returned columns that differ from "
                f"the declaration (missing: {missing or 'none'}; undeclared: {extra or 'none'}). "
                f"Declare every column in portal/datasets/{self.name}.py or drop it in build()."
            )
        return frame.select(pl.col(name).cast(self.schema[name], strict=True) for name in declared)
