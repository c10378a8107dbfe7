"""Daily weather in Seattle and New York, 2012-2015 (NOAA Climate Data Online)."""

from datetime import timedelta

import polars as pl

from portal.dataset import Column, Dataset, Origin, Source

CONDITIONS = ["drizzle", "fog", "rain", "snow", "sun"]

source = Source(
    name="weather",
    url="https://cdn.jsdelivr.net/npm/vega-datasets@3.2.1/data/weather.csv",
    format="csv",
    max_age=timedelta(days=366),
    description="Daily observations for two stations, as published in vega-datasets 3.2.1.",
    origin=Origin(
        producer="NOAA National Centers for Environmental Information",
        licence="other",
        licence_name="U.S. Government work, public domain",
        licence_url="https://www.usa.gov/government-works",
        homepage="https://www.ncei.noaa.gov/cdo-web/",
    ),
    schema={
        "location": pl.String,
        "date": pl.String,
        "precipitation": pl.Float64,
        "temp_max": pl.Float64,
        "temp_min": pl.Float64,
        "wind": pl.Float64,
        "weather": pl.String,
    },
)


def build(weather: pl.DataFrame) -> pl.DataFrame:
    return weather.select(
        pl.col("location").alias("station"),
        pl.col("date").str.to_date("%Y-%m-%d"),
        pl.col("precipitation").alias("precipitation_mm"),
        pl.col("temp_max").alias("temperature_max_c"),
        pl.col("temp_min").alias("temperature_min_c"),
        pl.col("wind").alias("wind_speed_ms"),
        pl.col("weather").alias("condition"),
    ).sort("station", "date")


dataset = Dataset(
    name="weather",
    title="Daily weather in Seattle and New York",
    description=(
        "Daily precipitation, temperature range and wind speed at Seattle and New York from "
        "2012 to 2015, from NOAA station records. The condition column is derived from several "
        "NOAA fields and is meant for teaching."
    ),
    inputs=[source],
    columns=[
        Column(
            "station",
            pl.String,
            "City of the weather station",
            nullable=False,
            allowed=["New York", "Seattle"],
        ),
        Column("date", pl.Date, "Day of the observation", nullable=False),
        Column("precipitation_mm", pl.Float64, "Total precipitation", unit="mm", min=0),
        Column(
            "temperature_max_c", pl.Float64, "Daily maximum temperature", unit="°C", min=-60, max=60
        ),
        Column(
            "temperature_min_c", pl.Float64, "Daily minimum temperature", unit="°C", min=-60, max=60
        ),
        Column("wind_speed_ms", pl.Float64, "Mean wind speed", unit="m/s", min=0),
        Column("condition", pl.String, "Summary of the day's weather", allowed=CONDITIONS),
    ],
    build=build,
    key=["station", "date"],
    tags=["climate", "weather", "time-series"],
)
