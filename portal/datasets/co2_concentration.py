"""Monthly atmospheric CO2 at Mauna Loa Observatory, Hawaii (Scripps CO2 Program)."""

from datetime import timedelta

import polars as pl

from portal.dataset import Column, Dataset, Origin, Source

source = Source(
    name="co2_concentration",
    url="https://cdn.jsdelivr.net/npm/vega-datasets@3.2.1/data/co2-concentration.csv",
    format="csv",
    max_age=timedelta(days=366),
    description="Monthly CO2 readings at Mauna Loa, as published in vega-datasets 3.2.1.",
    origin=Origin(
        producer="Scripps CO2 Program, UC San Diego",
        licence="cc-by-4.0",
        licence_name="Creative Commons Attribution 4.0",
        licence_url="https://creativecommons.org/licenses/by/4.0/",
        homepage="https://scrippsco2.ucsd.edu/data/atmospheric_co2/primary_mlo_co2_record",
    ),
    schema={"Date": pl.String, "CO2": pl.Float64, "adjusted CO2": pl.Float64},
)


def build(co2_concentration: pl.DataFrame) -> pl.DataFrame:
    return co2_concentration.select(
        pl.col("Date").str.to_date("%Y-%m-%d").alias("month"),
        pl.col("CO2").alias("co2_ppm"),
        pl.col("adjusted CO2").alias("co2_ppm_adjusted"),
    ).sort("month")


dataset = Dataset(
    name="co2_concentration",
    title="CO2 concentration at Mauna Loa",
    description=(
        "Monthly mean atmospheric CO2 measured at Mauna Loa Observatory since March 1958, "
        "in parts per million on the 2012 SIO manometric mole fraction scale, with a "
        "seasonally adjusted series."
    ),
    inputs=[source],
    columns=[
        Column(
            "month", pl.Date, "First day of the month of the reading", nullable=False, unique=True
        ),
        Column(
            "co2_ppm",
            pl.Float64,
            "Monthly mean CO2 mole fraction in dry air",
            unit="ppm",
            nullable=False,
            min=250,
            max=600,
        ),
        Column(
            "co2_ppm_adjusted",
            pl.Float64,
            "Monthly mean with the seasonal cycle removed (4-harmonic fit)",
            unit="ppm",
            nullable=False,
            min=250,
            max=600,
        ),
    ],
    build=build,
    key=["month"],
    tags=["climate", "co2", "time-series"],
)
