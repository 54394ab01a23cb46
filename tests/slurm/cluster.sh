#!/usr/bin/env bash
# A single-node Slurm cluster for the Slurm executor's tests (needs root, slurm-wlm, munge).
#
#   tests/slurm/cluster.sh start DIR   configure and start munged, slurmctld and slurmd
#                                      with all state under DIR; prints `export SLURM_CONF=...`
#   tests/slurm/cluster.sh stop DIR    stop the daemons started for DIR
#
# The node is this machine (its CPU count, a little less than its memory); jobs run as the
# caller. Process tracking by /proc (proctrack/linuxproc) and no task plugin: containers
# have no cgroup delegation to offer. Accounting storage is off, so `sacct` has nothing;
# clients fall back to squeue/scontrol.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m "$2")

start() {
    for tool in slurmctld slurmd munged sinfo; do
        command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install slurm-wlm munge" >&2; exit 2; }
    done
    mkdir -p "$dir"/{state,spool,log,run}
    # munged runs as the munge user, who may not traverse DIR (pytest's are 0700): its files
    # live in a folder of their own, named in DIR/munge for stop.
    local munge
    munge=$(mktemp -d /tmp/budget-tui-munge.XXXXXX)
    ln -sfn "$munge" "$dir/munge"
    local node cpus memory
    node=$(hostname -s)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))

    # munge: a fresh key and socket of our own, so a system munged (if any) is left alone.
    chown munge:munge "$munge" && chmod 711 "$munge"
    dd if=/dev/urandom bs=1 count=1024 of="$munge/munge.key" status=none
    chown munge:munge "$munge/munge.key" && chmod 400 "$munge/munge.key"
    runuser -u munge -- munged --key-file="$munge/munge.key" --socket="$munge/munge.socket" \
        --pid-file="$munge/munged.pid" --log-file="$munge/munged.log" \
        --seed-file="$munge/munged.seed" --force

    cat >"$dir/slurm.conf" <<CONF
ClusterName=budget-tui-test
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$(( 17000 + RANDOM % 1000 ))
SlurmdPort=$(( 18000 + RANDOM % 1000 ))
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# a job is signalled before its time limit and may be requeued (the executor's tests use both)
JobRequeue=1
KillWait=5
MinJobAge=600
InactiveLimit=0
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    # Ready when the node answers idle (or mixed, if a job got there first).
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm did not come up; logs in $dir/log" >&2
    stop
    exit 1
}

stop() {
    for pidfile in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/munge/munged.pid"; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    if [[ -L $dir/munge ]]; then
        rm -rf "$(readlink "$dir/munge")" "$dir/munge"
    fi
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
