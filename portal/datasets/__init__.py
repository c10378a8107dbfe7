"""The portal's datasets: one module each, named after the dataset it declares.

To add a dataset, add a module here that defines `dataset = Dataset(...)`; nothing else needs
to change. `portal.definitions` finds every module in this package and builds its assets.
"""

from __future__ import annotations

import importlib
import pkgutil

from portal.dataset import Dataset


def load_datasets() -> list[Dataset]:
    """Import every module in this package and return their datasets, checked for consistency."""
    datasets = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        dataset = getattr(module, "dataset", None)
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"{module.__file__} defines no `dataset = Dataset(...)`; every module in "
                "portal/datasets/ declares one dataset"
            )
        if dataset.name != module_info.name:
            raise ValueError(
                f"{module.__file__} declares dataset {dataset.name!r}; rename the module or the "
                "dataset so that they match, because the asset, table and file share the name"
            )
        datasets.append(dataset)

    names = {dataset.name for dataset in datasets}
    for dataset in datasets:
        unknown = [name for name in dataset.upstream_datasets if name not in names]
        if unknown:
            raise ValueError(f"dataset {dataset.name!r} reads unknown datasets {unknown}")
    return datasets
