#!/usr/bin/env bash
# Tear down the single-node SLURM cluster started by ci/slurm-up.sh: cancel all
# jobs, stop slurmd, slurmctld and (if slurm-up started it) munged by their pid
# files, remove the state folder and the generated /etc/slurm/slurm.conf.
# Safe to run when nothing runs. Packages and the munge key stay installed.
#
# Environment: ORCHESTRIX_SLURM_DIR (default /tmp/orchestrix-slurm), as for slurm-up.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=ORCHESTRIX_SLURM_DIR "$0" "$@"
fi

PROG=slurm-down
# shellcheck source=ci/slurm-common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm-common.sh"

stopped=()
stop_pidfile() { # stop_pidfile PIDFILE NAME: SIGTERM, wait up to 15 s, then SIGKILL
    local pid
    pid_alive "$1" "$2" || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        pid_alive "$1" "$2" || break
        sleep 0.1
    done
    if pid_alive "$1" "$2"; then
        log "$2 (pid $pid) ignored SIGTERM, sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    stopped+=("$2")
}

# Cancel every job (all users) while slurmctld and slurmd still run, so that
# slurmd kills the job processes; wait (up to ~15 s) for the queue to empty.
if pid_alive "$CTLD_PID" slurmctld && command -v squeue >/dev/null 2>&1; then
    jobs=$(timeout 15 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        timeout 15 scancel $jobs 2>/dev/null || true
        # Without a live slurmd, running jobs stay COMPLETING: do not wait then.
        pid_alive "$SLURMD_PID" slurmd || sleep 0.5
        for _ in $(seq 30); do
            pid_alive "$SLURMD_PID" slurmd || break
            [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null || true)" ] && break
            sleep 0.5
        done
        left=$(timeout 5 squeue -h -o %A 2>/dev/null || true)
        [ -z "$left" ] || log "jobs still in the queue: $(echo "$left" | tr '\n' ' ')"
    fi
fi

stop_pidfile "$SLURMD_PID" slurmd
stop_pidfile "$CTLD_PID" slurmctld
if [ -e "$SLURM_DIR/munged.ours" ]; then
    stop_pidfile "$MUNGE_PID" munged
    rm -f "$MUNGE_PID"
fi

if [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF"; then
    rm -f "$CONF"
fi
removed="no $SLURM_DIR"
if [ -e "$SLURM_DIR/.orchestrix-slurm" ]; then
    rm -rf "${SLURM_DIR:?}"
    removed="removed $SLURM_DIR"
elif [ -e "$SLURM_DIR" ]; then
    log "$SLURM_DIR was not made by ci/slurm-up.sh (no .orchestrix-slurm mark); left in place"
    removed="left $SLURM_DIR in place"
fi

if [ ${#stopped[@]} -gt 0 ]; then
    echo "SLURM down: stopped ${stopped[*]}; $removed"
else
    echo "SLURM down: nothing was running; $removed"
fi
