"""Each dataset's build function on its committed snapshot, checked against facts of the raw files.

The expected values were read from the snapshots with awk, jq and `date -u`, not with Polars,
so a parsing or cleaning error cannot hide by producing the same wrong value on both sides.
"""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

import portal.datasets
from portal.dataset import Dataset
from portal.datasets import load_datasets
from portal.formats import parse_file

# The example portal's datasets, whose values the tests below check. A fork that replaces
# the examples replaces those tests; the checks over every dataset keep working.
EXAMPLE_NAMES = {
    "climate_by_year",
    "co2_concentration",
    "disasters",
    "earthquakes",
    "global_temperature",
    "weather",
}
DATASET_NAMES = {dataset.name for dataset in load_datasets()}
SINGLE_SOURCE_NAMES = {
    dataset.name for dataset in load_datasets() if len(dataset.inputs) == len(dataset.sources) == 1
}
MODULE_NAMES = {
    path.stem
    for path in Path(portal.datasets.__file__).parent.glob("*.py")
    if not path.stem.startswith("_")
}


@pytest.fixture(scope="module")
def datasets() -> dict[str, Dataset]:
    return {dataset.name: dataset for dataset in load_datasets()}


def build_from_file(dataset: Dataset, path: Path) -> pl.DataFrame:
    """Parse `path` as the dataset's only source, then build and conform the table."""
    (source,) = dataset.sources
    raw = parse_file(source, path)
    return dataset.conform(dataset.build(**{source.name: raw}))


def row(frame: pl.DataFrame, **keys) -> dict:
    """Return the one row whose columns equal `keys`."""
    matches = frame.filter(**keys)
    assert matches.height == 1, f"{keys} matches {matches.height} rows"
    return matches.row(0, named=True)


def test_load_datasets_finds_all(datasets):
    assert set(datasets) == MODULE_NAMES


def test_examples_are_loaded(datasets):
    assert set(datasets) >= EXAMPLE_NAMES


@pytest.mark.parametrize("name", sorted(DATASET_NAMES))
def test_dtypes_as_declared(tables, datasets, name):
    assert tables[name].schema == datasets[name].schema


@pytest.mark.parametrize("name", sorted(SINGLE_SOURCE_NAMES))
def test_rows_equal_snapshot_rows(tables, snapshot_rows, name):
    assert tables[name].height == snapshot_rows[name]


@pytest.mark.parametrize("name", sorted(DATASET_NAMES))
def test_key_is_unique(tables, datasets, name):
    key = list(datasets[name].key)
    assert key
    assert tables[name].select(key).is_duplicated().sum() == 0


def test_co2_year_2000_mean(tables):
    readings = tables["co2_concentration"].filter(pl.col("month").dt.year() == 2000)
    assert readings.height == 12
    # Mean of the twelve monthly readings of 2000 in the CSV (awk).
    assert readings["co2_ppm"].mean() == pytest.approx(369.474167, abs=1e-6)


def test_co2_first_reading(tables):
    first = tables["co2_concentration"].row(0, named=True)
    assert first["month"] == date(1958, 3, 1)
    assert first["co2_ppm"] == 315.70
    assert first["co2_ppm_adjusted"] == 314.44


def test_co2_has_no_nulls(tables):
    assert tables["co2_concentration"].null_count().sum_horizontal().item() == 0


def test_temperature_known_years(tables):
    temperature = tables["global_temperature"]
    assert row(temperature, year=1880)["temperature_anomaly_c"] == -0.17
    assert row(temperature, year=2016)["temperature_anomaly_c"] == 1.01
    assert temperature["year"].min() == 1880
    assert temperature["year"].max() == 2023


def test_disasters_known_deaths(tables):
    disasters = tables["disasters"]
    assert row(disasters, disaster_type="Earthquake", year=2010)["deaths"] == 226733
    assert row(disasters, disaster_type="Drought", year=2010)["deaths"] == 20000
    assert row(disasters, disaster_type="All natural disasters", year=2004)["deaths"] == 244772


def test_disasters_types(tables):
    counts = dict(tables["disasters"]["disaster_type"].value_counts().iter_rows())
    assert len(counts) == 11
    assert counts["All natural disasters"] == 117
    assert counts["Earthquake"] == 111
    assert counts["Wildfire"] == 48


def test_earthquake_hualien(tables):
    quake = row(tables["earthquakes"], event_id="us1000chhc")
    assert quake["magnitude"] == 6.4
    assert quake["magnitude_type"] == "mww"
    assert quake["place"] == "22km NNE of Hualian, Taiwan"
    # 1517932242400 and 1517967111797 ms since the epoch, converted with `date -u`.
    assert quake["time"] == datetime(2018, 2, 6, 15, 50, 42, 400_000, tzinfo=UTC)
    assert quake["updated"] == datetime(2018, 2, 7, 1, 31, 51, 797_000, tzinfo=UTC)
    assert quake["longitude"] == 121.653
    assert quake["latitude"] == 24.1737
    assert quake["depth_km"] == 10.64
    assert quake["significance"] == 800
    assert quake["tsunami_warning"] is False
    assert quake["status"] == "reviewed"
    assert quake["network"] == "us"


def test_earthquake_tsunami_flag(tables):
    quakes = tables["earthquakes"]
    flagged = set(quakes.filter("tsunami_warning")["event_id"])
    assert flagged == {"ak18371148", "ak18261217", "us2000crq6", "us2000crle"}


def test_earthquake_integer_values(tables):
    # The feed writes some magnitudes and depths as JSON integers (`"mag":2`, depth `10`).
    quakes = tables["earthquakes"]
    assert row(quakes, event_id="ci37868143")["magnitude"] == 2.0
    assert row(quakes, event_id="ak18371148")["depth_km"] == 10.0


def test_earthquake_event_types(tables):
    counts = dict(tables["earthquakes"]["event_type"].value_counts().iter_rows())
    assert counts == {"earthquake": 1679, "explosion": 15, "quarry blast": 13}


def test_earthquake_negative_magnitude(tables):
    assert tables["earthquakes"]["magnitude"].min() == -0.8


def test_raw_earthquake_nulls(datasets, committed_snapshots):
    (source,) = datasets["earthquakes"].sources
    raw = parse_file(source, committed_snapshots / source.name / source.snapshot_name)
    # Features whose `felt` and `nst` are JSON null (jq).
    assert raw["felt"].null_count() == 1580
    assert raw["nst"].null_count() == 465


def test_earthquake_null_magnitude(datasets, committed_snapshots, tmp_path):
    """A feature whose magnitude or depth is JSON null keeps nulls, not NaN or zero."""
    (source,) = datasets["earthquakes"].sources
    collection = json.loads((committed_snapshots / source.name / source.snapshot_name).read_text())
    feature = next(item for item in collection["features"] if item["id"] == "us1000chhc")
    feature["properties"]["mag"] = None
    feature["properties"]["magType"] = None
    feature["geometry"]["coordinates"][2] = None
    path = tmp_path / source.snapshot_name
    path.write_text(json.dumps(collection))

    quake = row(build_from_file(datasets["earthquakes"], path), event_id="us1000chhc")
    assert quake["magnitude"] is None
    assert quake["magnitude_type"] is None
    assert quake["depth_km"] is None
    assert quake["latitude"] == 24.1737


def test_weather_seattle_day(tables):
    day = row(tables["weather"], station="Seattle", date=date(2014, 7, 4))
    assert day["precipitation_mm"] == 0.0
    assert day["temperature_max_c"] == 23.9
    assert day["temperature_min_c"] == 13.9
    assert day["wind_speed_ms"] == 3.6
    assert day["condition"] == "sun"


def test_weather_stations(tables):
    counts = dict(tables["weather"]["station"].value_counts().iter_rows())
    assert counts == {"Seattle": 1461, "New York": 1461}


def test_weather_empty_field_is_null(datasets, committed_snapshots, tmp_path):
    (source,) = datasets["weather"].sources
    lines = (committed_snapshots / source.name / source.snapshot_name).read_text().splitlines()
    index = lines.index("Seattle,2014-07-04,0.0,23.9,13.9,3.6,sun")
    lines[index] = "Seattle,2014-07-04,,23.9,13.9,,sun"
    path = tmp_path / source.snapshot_name
    path.write_text("\n".join(lines) + "\n")

    day = row(build_from_file(datasets["weather"], path), station="Seattle", date=date(2014, 7, 4))
    assert day["precipitation_mm"] is None
    assert day["wind_speed_ms"] is None
    assert day["temperature_max_c"] == 23.9


def test_join_one_row_per_year(tables, committed_snapshots):
    years = set()
    for name, column in [("global_temperature", 0), ("disasters", 1), ("co2_concentration", 0)]:
        path = committed_snapshots / name / f"{name}.csv"
        for line in path.read_text().splitlines()[1:]:
            years.add(int(line.split(",")[column][:4]))
    climate = tables["climate_by_year"]
    assert climate.height == len(years)
    assert set(climate["year"]) == years
    assert climate["year"].is_sorted()


def test_join_year_2000(tables):
    year = row(tables["climate_by_year"], year=2000)
    assert year["temperature_anomaly_c"] == 0.39
    assert year["co2_ppm"] == pytest.approx(369.474167, abs=1e-6)
    assert year["co2_months"] == 12
    assert year["disaster_deaths"] == 16667


def test_join_co2_1958(tables):
    year = row(tables["climate_by_year"], year=1958)
    # Readings start in March 1958 and June and October are missing from the CSV.
    assert year["co2_months"] == 8
    assert year["co2_ppm"] == pytest.approx(315.33375, abs=1e-9)


def test_join_partial_years(tables):
    climate = tables["climate_by_year"]

    only_temperature = row(climate, year=1880)
    assert only_temperature["temperature_anomaly_c"] == -0.17
    assert only_temperature["co2_ppm"] is None
    assert only_temperature["co2_months"] is None
    assert only_temperature["disaster_deaths"] is None

    before_co2 = row(climate, year=1900)
    assert before_co2["disaster_deaths"] == 1267360
    assert before_co2["co2_ppm"] is None

    # The disasters file has no row for 1904 and ends in 2017.
    assert row(climate, year=1904)["disaster_deaths"] is None
    after_disasters = row(climate, year=2018)
    assert after_disasters["disaster_deaths"] is None
    assert after_disasters["co2_months"] == 12


@pytest.fixture
def extra_dataset_module(monkeypatch, tmp_path):
    """Return a function that writes a module into a stand-in for the datasets package."""
    package = tmp_path / "datasets"
    package.mkdir()
    monkeypatch.setattr(portal.datasets, "__path__", [str(package)])
    written = []

    def write(module_name: str, source_code: str) -> None:
        (package / f"{module_name}.py").write_text(textwrap.dedent(source_code))
        written.append(f"portal.datasets.{module_name}")

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_load_rejects_misnamed_module(extra_dataset_module):
    extra_dataset_module(
        "station_weather",
        """
        import dataclasses
        from portal.datasets.weather import dataset as weather
        dataset = dataclasses.replace(weather, name="weather_copy")
        """,
    )
    with pytest.raises(ValueError, match="declares dataset 'weather_copy'"):
        load_datasets()


def test_load_rejects_module_without_dataset(extra_dataset_module):
    extra_dataset_module("notes", "STATIONS = ['Seattle']\n")
    with pytest.raises(TypeError, match="defines no `dataset = Dataset"):
        load_datasets()


def test_load_rejects_unknown_upstream(extra_dataset_module):
    extra_dataset_module(
        "yearly",
        """
        import dataclasses
        from portal.datasets.climate_by_year import dataset as climate
        dataset = dataclasses.replace(climate, name="yearly")
        """,
    )
    with pytest.raises(ValueError, match="reads unknown datasets"):
        load_datasets()


def test_conform_rejects_undeclared_column(datasets, tables):
    weather = datasets["weather"]
    with pytest.raises(ValueError, match="undeclared: \\['station_id'\\]"):
        weather.conform(tables["weather"].with_columns(station_id=pl.lit(1)))


def test_build_parameters_must_match_inputs():
    source = next(dataset for dataset in load_datasets() if dataset.sources).sources[0]

    def build(levels: pl.DataFrame) -> pl.DataFrame:
        return levels

    with pytest.raises(TypeError) as raised:
        Dataset(
            name="river_levels",
            title="Levels",
            description="",
            inputs=[source],
            columns=[],
            build=build,
        )

    assert "build() takes the parameters ['levels']" in str(raised.value)
    assert f"inputs are named ['{source.name}']" in str(raised.value)
