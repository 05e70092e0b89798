#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine (Debian/Ubuntu, no
# init system needed): installs the packages if missing, starts munged,
# slurmctld and slurmd by hand, waits until the node is idle.
#
#   ci/slurm-up.sh      # start (or reuse) the cluster
#   ci/slurm-down.sh    # cancel all jobs, stop the daemons, remove the state
#
# How the tests detect SLURM: `shutil.which("sbatch")` is not None and `sinfo`
# exits 0. Nothing else is exported or needed; the SLURM tools read the config
# this script writes to /etc/slurm/slurm.conf.
#
# What you get: partition `debug` (default, MaxTime=INFINITE) with the one node
# described by `slurmd -C`, select/cons_tres + CR_Core_Memory (memory is a
# consumable: --mem is honoured when placing jobs, not enforced at run time;
# several 1-core jobs run at once), no accounting (so `sbatch -A <anything>` is
# accepted), and the slurm-wlm-torque wrappers (qsub/qstat/qdel) for PBS-style
# submission. Job stdout goes where sbatch puts it (default: slurm-<id>.out in
# the submit directory; the qsub wrapper: <script name>.o<id> / .e<id> there).
#
# Environment:
#   ORCHESTRIX_SLURM_DIR      state/spool/log/pid folder (default /tmp/orchestrix-slurm)
#   ORCHESTRIX_SLURM_TIMEOUT  seconds to wait for the node to become idle (default 60)
#
# Needs root (re-runs itself under sudo otherwise). Idempotent: when the
# daemons it started are still running with the same config they are reused;
# otherwise what is left of a previous cluster is torn down (ci/slurm-down.sh:
# jobs cancelled, daemons stopped) and a fresh one started with empty state.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=ORCHESTRIX_SLURM_DIR,ORCHESTRIX_SLURM_TIMEOUT "$0" "$@"
fi

t0=$(date +%s)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=slurm-up
# shellcheck source=ci/slurm-common.sh
. "$here/slurm-common.sh"
TIMEOUT="${ORCHESTRIX_SLURM_TIMEOUT:-60}"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_LOG=/var/log/munge/munged.log

dump_logs() {
    local f
    for f in "$SLURM_DIR/log/slurmctld.log" "$SLURM_DIR/log/slurmd.log" "$MUNGE_LOG"; do
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2 2>/dev/null || echo "(missing)" >&2
    done
    echo "----- $CONF -----" >&2
    cat "$CONF" >&2 2>/dev/null || echo "(missing)" >&2
}

die() { # print the logs, then stop whatever was started so that nothing is left half up
    log "ERROR: $*"
    dump_logs
    log "stopping what was started"
    "$here/slurm-down.sh" >&2 || true
    exit 1
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# ---------------------------------------------------------------- packages
pkgs=(slurmctld slurmd slurm-client munge slurm-wlm-torque)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    pkg_note="installed ${missing[*]}"
else
    pkg_note="packages already installed"
fi

# ---------------------------------------------------------------- slurm.conf
host=$(hostname -s)
node_line=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=') || true
[ -n "$node_line" ] || die "slurmd -C printed no NodeName line"
node_name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
[ -n "$cpus" ] || cpus=$(nproc)
# RealMemory must be set so that memory is a consumable resource.
real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
if [ -z "$real_mem" ]; then
    real_mem=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    node_line="$node_line RealMemory=$real_mem"
fi
# A job without --mem/--mem-per-cpu gets this much per CPU (without it, such a
# job would be given the whole node's memory and run alone).
def_mem=$((real_mem / cpus))

new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
$MARKER; ci/slurm-down.sh removes it.
# State, spool, logs and pid files: $SLURM_DIR
ClusterName=orchestrix
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
KillWait=5
InactiveLimit=0
Waittime=0
MinJobAge=60
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- reuse or (re)start
if pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd && munge_works &&
    cmp -s "$new_conf" "$CONF"; then
    munge_note="munged reused"
    daemon_note="slurmctld+slurmd reused"
else
    if [ -d "$SLURM_DIR" ] && [ ! -e "$SLURM_DIR/.orchestrix-slurm" ] && [ -n "$(ls -A "$SLURM_DIR")" ]; then
        log "$SLURM_DIR exists, is not empty and was not made by this script; refusing to use it"
        exit 2
    fi
    if [ -e "$SLURM_DIR" ]; then
        # Part of a previous cluster may still run, or its config changed: tear it
        # all down (jobs cancelled first), then start afresh with empty state.
        log "tearing down what is left of the previous cluster"
        "$here/slurm-down.sh" >&2
    fi
    mkdir -p "$SLURM_DIR"
    touch "$SLURM_DIR/.orchestrix-slurm" # slurm-down only deletes a folder with this mark

    # munge: the key (the Debian package's postinst normally creates it), then munged
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    if [ ! -s "$MUNGE_KEY" ]; then
        log "creating $MUNGE_KEY"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    if munge_works; then
        munge_note="munged reused" # e.g. a system munged: slurm-down leaves it alone
    else
        log "starting munged"
        rm -f "$MUNGE_PID"
        runuser -u munge -- /usr/sbin/munged
        touch "$SLURM_DIR/munged.ours" # slurm-down only stops a munged this script started
        for _ in $(seq 50); do
            munge_works && break
            sleep 0.1
        done
        munge_works || die "munged does not answer (munge -n | unmunge fails)"
        munge_note="munged started"
    fi

    if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        backup="$CONF.orchestrix-backup.$(date +%s)"
        log "$CONF was not written by this script; moving it to $backup"
        mv "$CONF" "$backup"
    fi
    for d in state spool log run; do
        rm -rf "${SLURM_DIR:?}/$d"
        mkdir -p "$SLURM_DIR/$d"
    done
    mkdir -p "$CONF_DIR"
    install -m 0644 "$new_conf" "$CONF"
    log "starting slurmctld and slurmd"
    slurmctld || die "slurmctld failed to start"
    slurmd || die "slurmd failed to start"
    daemon_note="slurmctld+slurmd started"
fi

# ---------------------------------------------------------------- wait for the node
deadline=$(($(date +%s) + TIMEOUT))
state=""
while :; do
    state=$(sinfo -h -o %T 2>/dev/null | head -n1) || state=""
    case "$state" in
    idle | mixed | allocated | completing) break ;;
    esac
    pid_alive "$CTLD_PID" slurmctld || die "slurmctld exited"
    pid_alive "$SLURMD_PID" slurmd || die "slurmd exited"
    [ "$(date +%s)" -lt "$deadline" ] || die "node not idle after ${TIMEOUT}s (sinfo state: '${state:-no answer}')"
    sleep 0.5
done

echo "SLURM up in $(($(date +%s) - t0))s: node $node_name ($cpus CPUs, RealMemory=${real_mem}M, state $state), partition debug, conf $CONF, dir $SLURM_DIR ($pkg_note; $munge_note; $daemon_note)"
