"""Whether a real SLURM (from ci/slurm-up.sh) is reachable, for the cluster tests."""

from __future__ import annotations

import functools
import shutil
import subprocess


@functools.cache
def slurm_running() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and any(
        state.strip().rstrip("*") in ("idle", "mixed", "allocated")
        for state in result.stdout.split()
    )


def pbs_wrappers() -> bool:
    return bool(shutil.which("qsub") and shutil.which("qdel") and shutil.which("qstat"))


def queued_jobs() -> list[str]:
    result = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if line.strip()]


SKIP_REASON = "no SLURM scheduler running (CI starts one with ci/slurm-up.sh)"
