"""Parsing of downloaded files into raw Polars tables, one function per declared format.

A raw table keeps the values as the producer wrote them: text columns that a source does not
declare stay strings, and GeoJSON features are flattened without converting any value. CSV
columns are read as text and converted to their declared types afterwards, so a table's types
never depend on which rows a parser happened to sample.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

import polars as pl

from portal.dataset import Source

UTF8_BOM = codecs.BOM_UTF8
SNIFF_BYTES = 1 << 16
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")


class ParseError(ValueError):
    """A downloaded or committed file does not contain what its source declares."""


def parse_file(source: Source, path: Path | str) -> pl.DataFrame:
    """Read the file at `path` as `source` declares it, raising ParseError when it does not fit."""
    path = Path(path)
    try:
        match source.format:
            case "csv":
                frame = read_csv(source, path)
            case "json":
                frame = read_json_records(source, path)
            case "geojson":
                frame = read_geojson(source, path)
            case "parquet":
                frame = pl.read_parquet(path)
    except ParseError:
        raise
    except (pl.exceptions.PolarsError, ValueError, OSError) as error:
        raise ParseError(
            f"{path} is not valid {source.format} for source {source.name!r}: {error}"
        ) from error
    if frame.height == 0:
        raise ParseError(f"{path} contains no rows for source {source.name!r}")
    return frame


def decode_text(source: Source, data: bytes, where: str) -> str:
    """Decode a text file as the source declares, dropping a UTF-8 byte order mark.

    With `encoding="auto"`, bytes that are not valid UTF-8 are read as Latin-1, which maps
    every byte to a character, so such a file always decodes.
    """
    encoding = source.encoding.lower()
    try:
        is_utf8 = encoding == "auto" or codecs.lookup(encoding).name == "utf-8"
    except LookupError as error:
        raise ParseError(
            f"source {source.name!r} declares unknown encoding {encoding!r}"
        ) from error
    if is_utf8:
        data = data.removeprefix(UTF8_BOM)

    if encoding == "auto":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ParseError(
            f"{where}: line {line} is not valid {encoding} (byte {data[error.start]:#04x}) for "
            f"source {source.name!r}; declare its encoding, for example encoding='latin-1'"
        ) from error


class ColumnsMissing(ParseError):
    """A CSV file's header lacks columns that its source declares in `schema=`."""

    def __init__(self, source: Source, where: str, missing: list[str], header: list[str]) -> None:
        self.detail = (
            f"the file's header no longer has the declared columns {missing}; the header is "
            f"{header}. If the producer renamed them, update schema= in "
            f"portal/datasets/{source.name}.py (or the build function that reads them)"
        )
        super().__init__(f"{where} (source {source.name!r}): {self.detail}")


def read_csv(source: Source, path: Path) -> pl.DataFrame:
    text = decode_text(source, path.read_bytes(), str(path))
    header = csv_header(source, text, str(path))
    missing = [name for name in source.schema if name not in header]
    if missing:
        raise ColumnsMissing(source, str(path), missing, header)
    try:
        frame = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            schema={name: pl.String for name in header},
            separator=source.separator,
            quote_char=source.quote_char,
            null_values=list(source.null_values),
        )
    except pl.exceptions.ComputeError:
        # Polars names no line, so the csv module finds the record it stumbled on.
        check_records(source, text, len(header), str(path))
        raise

    # Polars fills a record with too few fields, or a blank line, with nulls up to the last
    # column, so only a file with a null in its last column needs the slower check.
    if frame[frame.columns[-1]].null_count():
        blank, records = check_records(source, text, len(header), str(path))
        # NOTE: Polars 2.1 reads each blank line as a row of nulls. If a later version skips
        # blank lines itself, the row and record counts differ and nothing is dropped here.
        if blank and records == frame.height:
            frame = frame.filter(~pl.int_range(pl.len()).is_in(blank))
    return frame.with_columns(
        convert_column(source, frame[name], dtype, str(path))
        for name, dtype in source.schema.items()
    )


def csv_header(source: Source, text: str, where: str) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""), **csv_dialect(source))
    header = next(reader, None)
    if not header:
        raise ParseError(f"{where} has no header row for source {source.name!r}")
    return header


def csv_dialect(source: Source) -> dict:
    if source.quote_char is None:
        return {"delimiter": source.separator, "quoting": csv.QUOTE_NONE}
    return {"delimiter": source.separator, "quotechar": source.quote_char}


def check_records(source: Source, text: str, width: int, where: str) -> tuple[list[int], int]:
    """Read every record after the header with the csv module, in the source's declared dialect.

    Returns the indices of blank lines among the data records and the number of data records.
    Raises ParseError with the line number of the first record whose field count differs from
    the header's, or of the first quoting error, such as a quote left open at the end of the
    file, which Polars may read as a null.
    """
    # The csv module rejects fields longer than 128 KiB by default, and Polars reads them.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, **csv_dialect(source))
    blank = []
    records = 0
    try:
        next(reader, None)
        for index, record in enumerate(reader):
            records = index + 1
            if not record:
                blank.append(index)
            elif len(record) != width:
                line = reader.line_num
                try:
                    is_last = next(reader, None) is None
                except csv.Error:
                    is_last = False
                message = field_count_message(source, where, line, len(record), width, is_last)
                raise ParseError(message)
    except csv.Error as error:
        raise ParseError(
            f"{where}: line {reader.line_num} of source {source.name!r} is not valid CSV: "
            f"{error}; the file may be cut short, or check its quoting"
        ) from error
    return blank, records


def field_count_message(
    source: Source, where: str, line: int, fields: int, width: int, is_last: bool
) -> str:
    message = (
        f"{where}: line {line} has {fields} fields but the header of source {source.name!r} "
        f"has {width}"
    )
    if fields < width and is_last:
        return f"{message}; it is the last line, so the file may be cut short"
    return f"{message}; check the separator ({source.separator!r}) and quoting"


def convert_column(
    source: Source, values: pl.Series, dtype: pl.DataType | type[pl.DataType], where: str
) -> pl.Series:
    """Convert a text column to its declared type, raising ParseError on the first bad value."""
    text = values.str.strip_chars()
    if dtype.is_numeric():
        if source.thousands:
            text = text.str.replace_all(source.thousands, "", literal=True)
        if source.decimal_comma:
            text = text.str.replace_all(",", ".", literal=True)
        converted = text.cast(dtype, strict=False)
    elif dtype == pl.Date:
        converted = text.str.to_date(strict=False)
    elif isinstance(dtype, pl.Datetime) or dtype == pl.Datetime:
        converted = text.str.to_datetime(strict=False)
        if isinstance(dtype, pl.Datetime):
            converted = converted.cast(dtype)
    elif dtype == pl.Boolean:
        lowered = text.str.to_lowercase()
        converted = (
            pl.when(lowered.is_in(TRUE_WORDS))
            .then(True)
            .when(lowered.is_in(FALSE_WORDS))
            .then(False)
            .otherwise(None)
        )
        converted = pl.select(converted.alias(values.name)).to_series()
    else:
        converted = text.cast(dtype, strict=False)

    failed = (values.is_not_null() & converted.is_null()).arg_true()
    if failed.len():
        row = failed[0]
        raise ParseError(
            f"{where}: column {values.name!r} of source {source.name!r} is declared {dtype}, but "
            f"data row {row + 1} contains {values[row]!r} ({failed.len()} such values); fix the "
            "declared type or the dialect (thousands, decimal_comma, null_values)"
        )
    return converted.alias(values.name)


def read_json_records(source: Source, path: Path) -> pl.DataFrame:
    records = json.loads(decode_text(source, path.read_bytes(), str(path)))
    if not isinstance(records, list):
        raise ParseError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    return pl.DataFrame(records, infer_schema_length=None)


def read_geojson(source: Source, path: Path) -> pl.DataFrame:
    """Flatten a FeatureCollection: `id`, every property, the geometry's type and coordinates."""
    collection = json.loads(decode_text(source, path.read_bytes(), str(path)))
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


def sniff(source: Source, head: bytes, content_type: str) -> str | None:
    """Return why the first bytes of a body cannot be the declared format, or None if they can.

    This is a quick look at the start of a download, so an error page fails with a clear
    message before the whole body is parsed.
    """
    media_type = content_type.split(";")[0].strip().lower()
    start = head.removeprefix(UTF8_BOM).lstrip()[:64].lower()
    if media_type in ("text/html", "application/xhtml+xml") or start.startswith(
        (b"<!doctype html", b"<html", b"<head", b"<body")
    ):
        return f"the server sent an HTML page (Content-Type {content_type or 'not set'})"
    if source.format == "parquet":
        return None if head.startswith(b"PAR1") else "the body does not start with PAR1"
    if source.format in ("json", "geojson"):
        return None if start[:1] in (b"[", b"{") else "the body does not start with [ or {"

    # CSV: the first complete lines must decode and start with a header row. Whether that
    # header has the declared columns is read_csv's check, because a body that fails it is
    # still CSV.
    cut = head.rfind(b"\n") if len(head) >= SNIFF_BYTES else len(head)
    sample = head[: cut if cut > 0 else len(head)]
    try:
        csv_header(source, decode_text(source, sample, "the body"), "the body")
    except ParseError as error:
        return str(error)
    return None
