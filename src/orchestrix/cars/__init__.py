"""orchestrix as a CARS orchestrator mode: ``"orchestrator": {"mode": "orchestrix", ...}``.

Installed with ``pip install "orchestrix[cars]"``; CARS imports this package through its
``cars.plugins`` entry point on ``import cars``, which registers the mode. ``backend`` picks
orchestrix's mode (multiprocessing by default; sequential, auto, local_dask, slurm_dask,
pbs_dask); every other key is an orchestrix key of that mode or CARS's own (see
docs/migrating-from-cars.md). Importing ``orchestrix`` alone never imports CARS.
"""

from .cluster import OrchestrixCluster

__all__ = ["OrchestrixCluster"]
