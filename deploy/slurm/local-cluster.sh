#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for nisbflow's SLURM tests (CI runs it through `make test`) and for
# trying `--cluster slurm` / `sbatch deploy/slurm/train.sbatch` on a laptop or workstation.
#
#   deploy/slurm/local-cluster.sh start    # install Debian's slurmctld, slurmd, slurm-client and munge where
#                                          # missing (needs root and apt), write a one-node slurm.conf for this
#                                          # host, start munged, slurmctld and slurmd, wait until the node is idle
#   deploy/slurm/local-cluster.sh status   # exit 0 when the node answers idle/mixed/allocated
#   deploy/slurm/local-cluster.sh stop     # stop the three daemons by their pid files
#
# The node is this host (`hostname`, its online CPUs, 90 % of its memory), in one partition `debug`; daemons run as
# root (SlurmUser=root), processes are tracked without cgroups (proctrack/linuxproc, task/none), CPUs are the
# consumable resource (select/cons_tres with CR_CPU). No GPUs are configured: GPU jobs are tested as rendered job
# scripts, not submitted. Everything the cluster writes lives under $NISBFLOW_SLURM_STATE (default
# /var/lib/nisbflow-slurm); the configuration is /etc/slurm/slurm.conf, which this script writes only when it is
# absent or was written by this script before.
#
# Exit codes: 0 done; 3 SLURM cannot be installed or started here (the reason is printed on one line, prefixed
# "slurm unavailable:"), which is what the test suite skips on.
set -euo pipefail

STATE=${NISBFLOW_SLURM_STATE:-/var/lib/nisbflow-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by nisbflow deploy/slurm/local-cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
MUNGE_PID=/run/munge/nisbflow-munged.pid

unavailable() { echo "slurm unavailable: $*" >&2; exit 3; }

install_packages() {
    local missing=()
    command -v slurmctld > /dev/null || missing+=(slurmctld)
    command -v slurmd > /dev/null || missing+=(slurmd)
    command -v sbatch > /dev/null || missing+=(slurm-client)
    command -v munged > /dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || unavailable "${missing[*]} not installed and not root to apt-get install them"
    command -v apt-get > /dev/null || unavailable "${missing[*]} not installed and no apt-get here"
    echo "installing ${PACKAGES[*]} from Debian (apt-get) ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${PACKAGES[@]}"; } > "$STATE/apt.log" 2>&1 \
        || unavailable "apt-get install ${PACKAGES[*]} failed (see $STATE/apt.log)"
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        unavailable "$CONF exists and was not written by this script; not replacing a real cluster's configuration"
    fi
    local host cpus memory_mb
    host=$(hostname)
    cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it answers OMP_NUM_THREADS when that is set
    memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$STATE/log"
    cat > "$CONF" <<EOF
$MARKER on $(date -u +%Y-%m-%dT%H:%M:%SZ)
ClusterName=nisbflow-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }

node_state() { sinfo -h -N -o %T 2> /dev/null | head -n 1; }

start_munge() {
    alive "$MUNGE_PID" && return 0
    [ -s /etc/munge/munge.key ] || mungekey --create > /dev/null 2>&1 \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2> /dev/null
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if id munge > /dev/null 2>&1; then
        chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
        chmod 400 /etc/munge/munge.key
        runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" > "$STATE/log/munged.out" 2>&1 \
            || unavailable "munged did not start (see $STATE/log/munged.out)"
    else
        chmod 400 /etc/munge/munge.key
        /usr/sbin/munged --force --pid-file="$MUNGE_PID" > "$STATE/log/munged.out" 2>&1 \
            || unavailable "munged did not start (see $STATE/log/munged.out)"
    fi
}

start() {
    mkdir -p "$STATE/log"
    install_packages
    write_config
    start_munge
    alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF" > "$STATE/log/slurmctld.out" 2>&1 \
        || unavailable "slurmctld did not start (see $STATE/log/slurmctld.log)"
    alive "$STATE/slurmd.pid" || slurmd -f "$CONF" > "$STATE/log/slurmd.out" 2>&1 \
        || unavailable "slurmd did not start (see $STATE/log/slurmd.log)"
    local state=""
    for _ in $(seq 1 60); do
        state=$(node_state)
        case "$state" in
            idle*|mixed*|allocated*) echo "slurm: node $(hostname) $state ($(getconf _NPROCESSORS_ONLN) CPUs), partition debug" >&2
                                     return 0 ;;
            down*|drain*) scontrol update nodename="$(hostname)" state=resume > /dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    unavailable "the node did not become idle within 60 s (last state: ${state:-none}; see $STATE/log/)"
}

stop() {
    local file pid
    for file in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$MUNGE_PID"; do
        if alive "$file"; then
            pid=$(cat "$file")
            kill "$pid" 2> /dev/null || true
            for _ in $(seq 1 20); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2> /dev/null || true
        fi
        rm -f "$file"
    done
    echo "slurm: stopped" >&2
}

status() {
    case "$(node_state)" in
        idle*|mixed*|allocated*) node_state; return 0 ;;
        *) echo "slurm: not running" >&2; return 1 ;;
    esac
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
