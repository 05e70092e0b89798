"""The ``slurm_dask`` and ``pbs_dask`` backends: dask workers started as batch jobs.

dask-jobqueue submits ``nb_workers`` jobs of one worker each; work starts as soon as the first
worker joins. Workers retire gracefully before their walltime ends (dask's ``--lifetime``: a worker
hands back what it holds and exits), and the cluster keeps ``nb_workers`` jobs alive (adaptive with
minimum = maximum), so replacement jobs are submitted and a run longer than one walltime finishes.
A job cancelled by hand (scancel, qdel) is replaced the same way. By default scheduler and workers
talk TLS with temporary certificates: a client without them cannot connect. ``close()`` cancels
every job this orchestrator submitted.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

from .local_dask import DaskBackend

__all__ = ["JobqueueBackend", "cluster_options", "job_script", "worker_lifetime"]

logger = logging.getLogger("orchestrix")

#: how long before its walltime a worker starts retiring, at most
RETIRE_MARGIN_SECONDS = 300


class JobqueueBackend(DaskBackend):
    """dask-jobqueue's SLURMCluster or PBSCluster, configured from orchestrix keys only."""

    def __init__(self, config: Any, client: Any = None) -> None:
        super().__init__(config, client)
        self._cert_dir: str | None = None

    def make_cluster(self) -> Any:
        if not self.config.security:
            warnings.warn(
                f"security=False: the {self.config.mode} scheduler accepts any client that "
                "reaches its port, without TLS",
                RuntimeWarning,
                stacklevel=4,
            )
        self._cert_dir = _private_dir(self.config.out_dir)
        cluster = cluster_class(self.config.mode)(**cluster_options(self.config, self._cert_dir))
        # Keep nb_workers jobs alive: jobs that end (walltime, scancel) are replaced.
        cluster.adapt(minimum_jobs=self.config.nb_workers, maximum_jobs=self.config.nb_workers)
        return cluster

    def security(self) -> Any:
        return self.cluster.security if self.cluster is not None else None

    def close(self) -> None:
        cluster = self.cluster
        super().close()  # closing the cluster cancels its jobs
        self.cluster = None
        _remove_cert_dir(cluster, self._cert_dir)


def cluster_class(mode: str) -> Any:
    if mode == "slurm_dask":
        from dask_jobqueue import SLURMCluster

        return SLURMCluster
    from dask_jobqueue import PBSCluster

    return PBSCluster


def cluster_options(config: Any, cert_dir: str | None) -> dict[str, Any]:
    """The keyword arguments of the jobqueue cluster: nothing site-specific is hard-coded."""
    lifetime, stagger = worker_lifetime(config.walltime)
    directives = list(config.job_extra)
    if config.qos:
        directives.append(
            f"--qos={config.qos}" if config.mode == "slurm_dask" else f"-l qos={config.qos}"
        )
    options: dict[str, Any] = {
        "cores": config.cores,
        "processes": 1,
        "memory": f"{int(config.max_ram_per_worker)}MiB",
        "walltime": config.walltime,
        "account": config.account,
        "queue": config.queue,
        "python": config.python or sys.executable,
        "interface": config.interface,
        "job_extra_directives": directives,
        "worker_extra_args": ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s"],
        "silence_logs": logging.CRITICAL,
        "dashboard_address": "127.0.0.1:0" if config.activate_dashboard else None,
    }
    if config.out_dir:
        options["log_directory"] = os.path.join(os.path.abspath(config.out_dir), "workers_log")
    elif cert_dir is not None:
        options["log_directory"] = cert_dir  # without out_dir, job logs go when the run ends
    if config.security:
        options["security"] = True  # temporary self-signed certificates, TLS everywhere
        options["protocol"] = "tls://"
        options["shared_temp_directory"] = cert_dir
    return options


def worker_lifetime(walltime: str) -> tuple[int, int]:
    """(lifetime, stagger) in seconds: workers retire before the walltime kills their job."""
    hours, minutes, seconds = (int(part) for part in walltime.split(":"))
    total = hours * 3600 + minutes * 60 + seconds
    margin = min(RETIRE_MARGIN_SECONDS, max(total // 5, 1))
    return max(total - margin, 1), max(margin // 2, 0)


def job_script(config: Any) -> str:
    """The job script that the cluster would submit (a scheduler starts, nothing is submitted)."""
    cert_dir = _private_dir(config.out_dir)
    cluster = None
    try:
        cluster = cluster_class(config.mode)(**cluster_options(config, cert_dir))
        try:
            return str(cluster.job_script())
        finally:
            cluster.close()
    finally:
        _remove_cert_dir(cluster, cert_dir)


def _remove_cert_dir(cluster: Any, cert_dir: str | None) -> None:
    """Remove the certificates' directory. dask-jobqueue keeps the certificate files open as
    temporary files on the cluster object (``_job_<key>``); closing them deletes them."""
    for name, value in list(vars(cluster).items()) if cluster is not None else ():
        if name.startswith("_job_") and hasattr(value, "close"):
            value.close()
    if cert_dir is not None:
        shutil.rmtree(cert_dir, ignore_errors=True)


def _private_dir(out_dir: str | None) -> str:
    """A mode-0700 directory for the temporary certificates (and, without ``out_dir``, the job
    logs), removed at close, on a path the jobs can read: under
    ``out_dir`` when given (it must be on a shared file system anyway), else under the home
    directory (shared on most clusters)."""
    base = os.path.abspath(out_dir) if out_dir else os.path.expanduser("~/.orchestrix")
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=".orchestrix-tls-", dir=base)
