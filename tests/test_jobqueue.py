"""slurm_dask and pbs_dask: job scripts (no scheduler needed) and runs on a real SLURM."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import orchestrix as ox
from orchestrix.backends.dask.jobqueue import job_script, worker_lifetime
from orchestrix.config import parse_config
from slurm import SKIP_REASON, pbs_wrappers, queued_jobs, slurm_running
from tasks import fail, inc, sleep_for


def test_slurm_job_script_carries_the_configuration(tmp_path):
    config = parse_config(
        mode="slurm_dask",
        account="proj42",
        walltime="01:00:00",
        max_ram_per_worker=3000,
        qos="short",
        queue="debug",
        job_extra=["--constraint=skylake"],
        cores=2,
        out_dir=str(tmp_path),
    )
    script = job_script(config)
    for line in (
        "#SBATCH -A proj42",
        "#SBATCH -t 01:00:00",
        "#SBATCH -p debug",
        "#SBATCH --qos=short",
        "#SBATCH --constraint=skylake",
        "#SBATCH --cpus-per-task=2",
    ):
        assert line in script
    assert f"{tmp_path}/workers_log/" in script
    assert "--protocol tls://" in script and "--tls-key" in script
    assert "--lifetime 3300s" in script  # retires 5 min before the walltime
    assert sys.executable in script
    assert "ib0" not in script and "5000" not in script and "7000" not in script
    assert not list(tmp_path.glob(".orchestrix-tls-*"))  # certificates removed afterwards


def test_job_script_carries_preload_and_limits(tmp_path):
    options = {"mode": "slurm_dask", "account": "p", "out_dir": str(tmp_path)}
    config = parse_config(**options, preload=["numpy", "json.decoder"], limits="warn")
    script = job_script(config)
    assert "--preload numpy --preload json.decoder" in script
    # dask's nanny must not terminate a worker over its memory limit
    assert "export DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE=False" in script
    plain = job_script(parse_config(**options))
    assert "--preload" not in plain and "TERMINATE" not in plain


def test_pbs_job_script_and_security_off_warns(tmp_path, monkeypatch):
    _fake_batch(tmp_path, monkeypatch, "echo 4242.server")  # make_cluster submits its jobs
    config = parse_config(
        mode="pbs_dask", account="p9", walltime="00:10:00", security=False, out_dir=str(tmp_path)
    )
    script = job_script(config)
    assert "#PBS -A p9" in script and "#PBS -l walltime=00:10:00" in script
    assert "tls" not in script
    with pytest.warns(RuntimeWarning, match="security=False"):
        from orchestrix.backends.dask.jobqueue import JobqueueBackend
        from orchestrix.monitoring.monitor import Monitor

        backend = JobqueueBackend(config, Monitor())
        cluster = backend.make_cluster()
        cluster.close()
        backend.close()


def test_worker_lifetime_leaves_a_margin_before_the_walltime():
    assert worker_lifetime("01:00:00") == (3300, 150)
    assert worker_lifetime("00:01:00") == (48, 6)
    assert worker_lifetime("48:00:00") == (172500, 150)


def test_plan_prints_the_job_script_without_submitting(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrix",
            "plan",
            "--mode",
            "slurm_dask",
            "--account",
            "abc",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "#SBATCH -A abc" in result.stdout and "dask_worker" in result.stdout


def test_slurm_requires_an_account():
    with pytest.raises(ox.ConfigError, match="'account' is required"):
        parse_config(mode="slurm_dask")


# -- on a real SLURM --------------------------------------------------------------------------

needs_slurm = pytest.mark.skipif(not slurm_running(), reason=SKIP_REASON)


def _cluster(mode="slurm_dask", **options):
    base = {
        "mode": mode,
        "account": "ci",
        "nb_workers": 2,
        "max_ram_per_worker": 1000,
        "walltime": "00:10:00",
    }
    return ox.Orchestrator(**{**base, **options})


def _wait_for_empty_queue(seconds=30):
    deadline = time.monotonic() + seconds
    while queued_jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    return queued_jobs()


@needs_slurm
@pytest.mark.slurm
def test_tls_is_required_to_connect(tmp_path):
    import asyncio

    from distributed.comm import connect
    from distributed.security import Security

    async def handshake(address, security):
        comm = await connect(address, timeout=5, **security.get_connection_args("client"))
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    with _cluster(out_dir=str(tmp_path)) as orch:
        address = orch._backend.client.scheduler.address
        assert address.startswith("tls://")
        assert asyncio.run(handshake(address, orch._backend.security()))["type"] == "Scheduler"
        for wrong in (address, address.replace("tls://", "tcp://")):
            with pytest.raises((OSError, TimeoutError, ValueError, TypeError)):
                asyncio.run(handshake(wrong, Security()))  # no certificates: refused
        assert orch.compute(inc(1)) == 2


@needs_slurm
@pytest.mark.slurm
def test_queue_is_empty_after_close_and_after_an_exception(tmp_path):
    with _cluster(out_dir=str(tmp_path)) as orch:
        assert orch.compute(inc(1)) == 2
        assert queued_jobs()
    assert _wait_for_empty_queue() == []
    with pytest.raises(ox.TaskError), _cluster(out_dir=str(tmp_path)) as orch:
        orch.compute(fail())
    assert _wait_for_empty_queue() == []
    assert list((tmp_path / "workers_log").glob("*.err"))  # job logs land in out_dir


@needs_slurm
@pytest.mark.slurm
def test_a_cancelled_worker_job_is_replaced_and_the_run_completes(tmp_path):
    with _cluster(out_dir=str(tmp_path)) as orch:
        assert orch.compute(inc(1)) == 2
        running = orch.as_completed([sleep_for(2, i) for i in range(12)])
        first = next(running)
        job = queued_jobs()[0].split()[0]
        subprocess.run(["scancel", job], check=True)
        rest = list(running)
    assert sorted([first, *rest]) == [(i, i) for i in range(12)]


@needs_slurm
@pytest.mark.slurm
def test_a_run_longer_than_the_walltime_completes(tmp_path):
    # walltime 1 min: workers retire after 48 s and replacement jobs take over
    with _cluster(out_dir=str(tmp_path), walltime="00:01:00") as orch:
        values = orch.compute([sleep_for(4, i) for i in range(40)])
    assert values == list(range(40))


@needs_slurm
@pytest.mark.slurm
@pytest.mark.skipif(not pbs_wrappers(), reason="no PBS-style qsub/qdel/qstat (slurm-wlm-torque)")
def test_pbs_dask_runs_through_the_pbs_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(
        tmp_path
    )  # Debian's qsub wrapper writes job output into the current directory
    with _cluster(mode="pbs_dask", out_dir=str(tmp_path)) as orch:
        assert orch.compute([inc(i) for i in range(10)]) == list(range(1, 11))
    assert _wait_for_empty_queue() == []


# -- against fake batch commands (no SLURM or PBS needed) --------------------------------------

FAKE_COMMANDS = {"slurm_dask": ("sbatch", "scancel"), "pbs_dask": ("qsub", "qdel")}


def _fake_batch(tmp_path, monkeypatch, submit_body, only_fakes=False):
    """Put fake submit and cancel commands first on PATH (alone on it with ``only_fakes``);
    the cancel command records its arguments in ``bin/cancelled``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {}
    for submit, cancel in FAKE_COMMANDS.values():
        scripts[submit] = f"#!/bin/sh\n{submit_body}\n"
        scripts[cancel] = f'#!/bin/sh\necho "$@" >> {bin_dir}/cancelled\n'
    for status in ("squeue", "qstat"):
        scripts[status] = "#!/bin/sh\nexit 0\n"
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = str(bin_dir) if only_fakes else os.pathsep.join([str(bin_dir), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    return bin_dir


def _fake_cluster(mode, out_dir, **options):
    return ox.Orchestrator(mode=mode, account="ci", nb_workers=1, out_dir=str(out_dir), **options)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["slurm_dask", "pbs_dask"])
def test_a_refused_job_fails_the_start_with_the_commands_words(tmp_path, monkeypatch, mode):
    refusal = "error: Batch job submission failed: Invalid account or partition specified"
    _fake_batch(tmp_path, monkeypatch, f'echo "{refusal}" >&2\nexit 1')
    with pytest.raises(ox.OrchestrixError, match="Invalid account or partition") as info:
        _fake_cluster(mode, tmp_path / "run")
    assert FAKE_COMMANDS[mode][0] in str(info.value)
    assert not list((tmp_path / "run").glob(".orchestrix-tls-*"))  # certificates removed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["slurm_dask", "pbs_dask"])
def test_a_missing_submit_command_fails_the_start(tmp_path, monkeypatch, mode):
    _fake_batch(tmp_path, monkeypatch, "exit 0", only_fakes=True)
    (tmp_path / "bin" / FAKE_COMMANDS[mode][0]).unlink()
    with pytest.raises(ox.OrchestrixError, match=f"'{FAKE_COMMANDS[mode][0]}', which is not on"):
        _fake_cluster(mode, tmp_path / "run")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["slurm_dask", "pbs_dask"])
def test_no_worker_joining_fails_the_compute_with_the_job_logs(tmp_path, monkeypatch, mode):
    # The job is accepted, and its worker dies at once: it only leaves a log behind.
    logs = tmp_path / "run" / "workers_log"
    monkeypatch.setenv("FAKE_LOG", str(logs / "dask-worker-4242.err"))
    accept = 'echo "ModuleNotFoundError: No module named distributed" > "$FAKE_LOG"\n'
    accept += "echo 'Submitted batch job 4242'"
    bin_dir = _fake_batch(tmp_path, monkeypatch, accept)
    with _fake_cluster(mode, tmp_path / "run", worker_start_timeout=2) as orch:
        with pytest.raises(ox.NoWorkerError, match="worker_start_timeout=2 s") as info:
            orch.compute(inc(1))
        assert "No module named distributed" in str(info.value) and "4242" in str(info.value)
        assert info.value.name == "inc"
        with pytest.raises(ox.NoWorkerError):  # later calls fail at once
            orch.compute(inc(2))
    assert "4242" in (bin_dir / "cancelled").read_text()  # close cancelled the job
