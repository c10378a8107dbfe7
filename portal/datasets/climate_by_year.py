"""Yearly climate indicators side by side: CO2, temperature anomaly and disaster deaths."""

import polars as pl

from portal.dataset import Column, Dataset
from portal.datasets.disasters import TOTAL


def build(
    co2_concentration: pl.DataFrame,
    global_temperature: pl.DataFrame,
    disasters: pl.DataFrame,
) -> pl.DataFrame:
    co2 = co2_concentration.group_by(pl.col("month").dt.year().cast(pl.Int32).alias("year")).agg(
        pl.col("co2_ppm").mean().alias("co2_ppm"),
        pl.len().cast(pl.Int32).alias("co2_months"),
    )
    deaths = disasters.filter(pl.col("disaster_type") == TOTAL).select(
        "year", pl.col("deaths").alias("disaster_deaths")
    )
    return (
        global_temperature.join(co2, on="year", how="full", coalesce=True)
        .join(deaths, on="year", how="full", coalesce=True)
        .sort("year")
    )


dataset = Dataset(
    name="climate_by_year",
    title="Climate indicators by year",
    description=(
        "One row per year with the mean CO2 concentration at Mauna Loa, the global surface "
        "temperature anomaly and the reported deaths from all natural disasters. A value is "
        "empty for years its source does not cover."
    ),
    inputs=["co2_concentration", "global_temperature", "disasters"],
    columns=[
        Column("year", pl.Int32, "Calendar year", nullable=False, unique=True),
        Column(
            "temperature_anomaly_c",
            pl.Float64,
            "Global mean surface temperature minus its 1951-1980 mean",
            unit="°C",
        ),
        Column(
            "co2_ppm",
            pl.Float64,
            "Mean of the year's monthly CO2 readings; a year with fewer than 12 readings "
            "(see co2_months) is biased by the seasonal cycle",
            unit="ppm",
            min=250,
            max=600,
        ),
        Column("co2_months", pl.Int32, "Number of monthly CO2 readings in the mean", min=1, max=12),
        Column(
            "disaster_deaths",
            pl.Int64,
            "Reported deaths from all natural disasters",
            unit="people",
            min=0,
        ),
    ],
    build=build,
    key=["year"],
    tags=["climate", "hazards", "time-series"],
)
