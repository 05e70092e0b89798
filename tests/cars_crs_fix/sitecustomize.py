"""Work around a CARS 1.3.0 bug for the differential runs of its merging pipeline (put this
directory on PYTHONPATH of a ``cars`` process: Python imports ``sitecustomize`` at start-up).

``dsm_merging/weighted_fusion_app.py`` writes the output's CRS as ``"EPSG:{}".format(crs)`` with
a rasterio CRS, whose str() is already ``"EPSG:32631"``: the profile says ``"EPSG:EPSG:32631"``.
rasterio refuses it, CARS's saver logs "Tile not saved" and goes on, and every in-memory mode
(CARS's sequential, orchestrix's) writes an all-nodata DSM with exit code 0; only CARS's
multiprocessing mode repairs the profile in its dump round trip.

The fix, in every process that imports ``cars.data_structures.cars_dataset``: the profile CARS
reads from a tile (``get_profile_rasterio``) has its doubled prefix removed. Nothing is imported
before CARS imports that module itself (a finder on ``sys.meta_path`` waits for it).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "cars.data_structures.cars_dataset"
_DOUBLED = "EPSG:EPSG:"


def _patch(module) -> None:
    original = module.get_profile_rasterio

    def get_profile_rasterio(dataset):
        profile = original(dataset)
        crs = profile.get("crs") if isinstance(profile, dict) else None
        if isinstance(crs, str) and crs.startswith(_DOUBLED):
            profile = dict(profile)
            profile["crs"] = crs[len("EPSG:") :]
        return profile

    module.get_profile_rasterio = get_profile_rasterio


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
