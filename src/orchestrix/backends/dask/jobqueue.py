"""The ``slurm_dask`` and ``pbs_dask`` backends: dask workers started as batch jobs.

dask-jobqueue submits ``nb_workers`` jobs of one worker each; work starts as soon as the first
worker joins. Workers retire gracefully before their walltime ends (dask's ``--lifetime``: a worker
hands back what it holds and exits), and the cluster keeps ``nb_workers`` jobs alive (adaptive with
minimum = maximum), so replacement jobs are submitted and a run longer than one walltime finishes.
A job cancelled by hand (scancel, qdel) is replaced the same way. By default scheduler and workers
talk TLS with temporary certificates: a client without them cannot connect. ``close()`` cancels
every job this orchestrator submitted.

The first jobs are submitted at the start, in the caller's thread: a submit command that is
missing or refuses the job fails the start with its own words. If no worker has joined
``worker_start_timeout`` seconds later, the tasks waiting fail with :class:`NoWorkerError`, which
shows the end of the job logs.
"""

from __future__ import annotations

import glob
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

from ... import failures
from ...errors import OrchestrixError, TaskError
from ...graph.factorize import WorkUnit
from ..base import Recorder, Sink
from .backend import DaskBackend, limit_settings

__all__ = ["JobqueueBackend", "cluster_options", "job_script", "worker_lifetime"]

logger = logging.getLogger("orchestrix")

#: how long before its walltime a worker starts retiring, at most
RETIRE_MARGIN_SECONDS = 300
#: how often the scheduler is asked whether a first worker has joined (seconds)
JOIN_POLL_SECONDS = 0.5
#: how much of the job logs a NoWorkerError shows: the newest files, their last lines
LOG_FILES_SHOWN, LOG_LINES_SHOWN = 3, 15


class JobqueueBackend(DaskBackend):
    """dask-jobqueue's SLURMCluster or PBSCluster, configured from orchestrix keys only."""

    def __init__(self, config: Any, monitor: Recorder, client: Any = None) -> None:
        super().__init__(config, monitor, client)
        self._cert_dir: str | None = None
        self._log_dir: str | None = None
        # set when worker_start_timeout passed with no worker: why each waiting task fails
        self._no_worker: str | None = None

    def make_cluster(self) -> Any:
        if not self.config.security:
            warnings.warn(
                f"security=False: the {self.config.mode} scheduler accepts any client that "
                "reaches its port, without TLS",
                RuntimeWarning,
                stacklevel=4,
            )
        self._cert_dir = _private_dir(self.config.out_dir)
        options = cluster_options(self.config, self._cert_dir)
        self._log_dir = options.get("log_directory")
        cluster = cluster_class(self.config.mode)(**options)
        try:
            submit_jobs(cluster, self.config.mode, int(self.config.nb_workers))
        except BaseException:
            _close_after_failed_submit(cluster)
            raise
        # Keep nb_workers jobs alive: jobs that end (walltime, scancel) are replaced.
        cluster.adapt(minimum_jobs=self.config.nb_workers, maximum_jobs=self.config.nb_workers)
        return cluster

    # -- waiting for the first worker ----------------------------------------------------------

    def _await_workers(self) -> None:
        if self.client.scheduler_info(n_workers=1)["workers"]:
            self._joined.set()
            return
        threading.Thread(
            target=self._watch_joining, name="orchestrix-worker-start", daemon=True
        ).start()

    def _watch_joining(self) -> None:
        """Until a first worker joins: once worker_start_timeout has passed, fail the tasks
        waited for, now and later (a worker that joins after that is still used)."""
        limit = self.config.worker_start_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while not self._closed.wait(JOIN_POLL_SECONDS):
            try:
                joined = bool(self.client.scheduler_info(n_workers=1)["workers"])
            except Exception:  # noqa: BLE001 - closing meanwhile
                continue
            if joined:
                self._no_worker = None
                self._joined.set()
                return
            if deadline is not None and time.monotonic() >= deadline and not self._no_worker:
                self._no_worker = self._no_worker_message(limit)
                self._fail_waiting(self._no_worker_error)

    def _watch(self, pairs: list[tuple[WorkUnit, Any]], sink: Sink) -> int:
        job = super()._watch(pairs, sink)
        if self._no_worker is not None:  # checked after registering: the watcher cannot miss it
            self._fail_waiting(self._no_worker_error)
        return job

    def _no_worker_error(self, unit: WorkUnit) -> TaskError:
        return failures.no_worker_error(unit.key, unit.name, str(self._no_worker))

    def _no_worker_message(self, limit: float) -> str:
        jobs = [str(job.job_id) for job in self.cluster.workers.values() if job.job_id]
        command = shlex.split(self.cluster.job_cls.submit_command)[0]
        return (
            f"no {self.config.mode} worker joined within worker_start_timeout={limit} s of the "
            f"start; {command} accepted jobs {', '.join(jobs) or '(none)'}; "
            f"{_log_tail(self._log_dir)}"
        )

    def security(self) -> Any:
        return self.cluster.security if self.cluster is not None else None

    def close(self) -> None:
        cluster = self.cluster
        super().close()  # closing the cluster cancels its jobs
        self.cluster = None
        _remove_cert_dir(cluster, self._cert_dir)


def submit_jobs(cluster: Any, mode: str, count: int) -> None:
    """Submit the first ``count`` jobs now and wait for the submit command's answer. The
    adaptive scaling that keeps them alive afterwards would only log a refusal (bad account,
    partition; a missing ``sbatch``), and the run would wait for workers that never come."""
    command = shlex.split(cluster.job_cls.submit_command)[0]
    while len(cluster.worker_spec) < count:
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        cluster.sync(cluster._correct_state)  # starts the jobs in worker_spec; raises their error
    except FileNotFoundError:
        raise OrchestrixError(
            f"mode {mode!r} submits its worker jobs with {command!r}, which is not on PATH: run "
            "where the batch system's commands are available (e.g. a login node)"
        ) from None
    except Exception as exc:
        raise OrchestrixError(
            f"mode {mode!r} could not submit its worker jobs: {command!r} refused them "
            f"(check account, queue, qos, job_extra):\n{str(exc).strip()}"
        ) from exc


def _close_after_failed_submit(cluster: Any) -> None:
    """Close a cluster whose jobs were not all submitted: those submitted are cancelled."""
    from distributed.core import Status

    for job in cluster.workers.values():
        if job.status == Status.created:  # its submission failed: nothing runs, nothing to stop
            job.status = Status.failed
    cluster.close()
    _remove_cert_dir(cluster, None)


def _log_tail(directory: str | None) -> str:
    """The last lines of the newest job logs in ``directory``, for an error message."""
    if directory is None:
        return "the jobs write no log"
    paths = [p for p in glob.glob(os.path.join(directory, "*")) if os.path.isfile(p)]
    paths = [p for p in paths if os.path.getsize(p) > 0]
    if not paths:
        return (
            f"no job has written a log in {directory} yet: the jobs may still be queued "
            "(see squeue or qstat), or may not have started"
        )
    paths.sort(key=os.path.getmtime, reverse=True)
    parts = [f"the newest job logs in {directory} end with:"]
    for path in paths[:LOG_FILES_SHOWN]:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = stream.read().splitlines()[-LOG_LINES_SHOWN:]
        parts.append(f"--- {os.path.basename(path)}\n" + "\n".join(lines))
    return "\n".join(parts)


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
        "worker_extra_args": [
            *("--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s"),
            *(arg for module in config.preload for arg in ("--preload", module)),
        ],
        # The jobs read no configuration of the caller's: the limits' settings go as variables.
        "job_script_prologue": _env_exports(limit_settings(config)),
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


def _env_exports(settings: dict[str, Any]) -> list[str]:
    """Shell lines that give a job's dask these settings (dask reads ``DASK_*`` variables)."""
    return [
        f"export DASK_{key.upper().replace('.', '__').replace('-', '_')}={value!r}"
        for key, value in settings.items()
    ]


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
