#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine, with accounting (slurmdbd + MariaDB),
# from Debian's packages. No systemd: every daemon is started by hand and recorded, so that
# teardown_slurm.sh stops exactly what this script started.
#
#   cluster/local_slurm/setup_slurm.sh STATE_DIR [--partition NAME] [--account NAME] [--gpus N]
#   source STATE_DIR/env.sh        # SLURM_CONF=...: sbatch/sacct/snakemake now use it
#   ...
#   cluster/local_slurm/teardown_slurm.sh STATE_DIR
#
# Everything (configs, spool, logs, database, sockets, pid files) lives under STATE_DIR;
# /etc is not touched except for apt-get installing the packages. Ports are picked free at
# start-up, so a second cluster or a stale one cannot collide with this one.
# Exit codes: 0 up; 3 cannot install (not root / no apt-get): the caller may skip; 1 failed.
set -euo pipefail

usage() { echo "usage: $0 STATE_DIR [--partition NAME] [--account NAME] [--gpus N]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
STATE=$(realpath -m "$1"); shift
PARTITION=main
ACCOUNT=brainpipe
GPUS=0       # fake generic GPUs (gres/gpu) on the node: 0 = a cluster without GPUs
while [[ $# -gt 0 ]]; do
    case "$1" in
        --partition) PARTITION=$2; shift 2 ;;
        --account) ACCOUNT=$2; shift 2 ;;
        --gpus) GPUS=$2; shift 2 ;;
        *) usage ;;
    esac
done
CLUSTER=brainpipe

log() { echo "[setup_slurm] $*" >&2; }
cannot() { echo "[setup_slurm] CANNOT: $*" >&2; exit 3; }

# --- packages --------------------------------------------------------------------------
PACKAGES=(munge slurm-wlm slurmdbd mariadb-server)
need_install=0
for exe in /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmdbd \
           /usr/sbin/mariadbd /usr/bin/sacct; do
    [[ -x $exe ]] || need_install=1
done
if [[ $need_install == 1 ]]; then
    [[ $(id -u) == 0 ]] || cannot "SLURM is not installed and this is not root (apt-get needs root)"
    command -v apt-get >/dev/null || cannot "SLURM is not installed and apt-get is not available"
    log "installing ${PACKAGES[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$STATE.apt.log" 2>&1; then
        apt-get update -qq >>"$STATE.apt.log" 2>&1 || cannot "apt-get update failed (see $STATE.apt.log)"
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$STATE.apt.log" 2>&1 \
            || cannot "apt-get install ${PACKAGES[*]} failed (see $STATE.apt.log)"
    fi
fi
[[ $(id -u) == 0 ]] || cannot "slurmd must run as root to launch jobs"

# --- one cluster per machine ------------------------------------------------------------
# Two of these clusters on one host share the node name, /etc/slurm/slurm.conf (which srun in
# a job reads) and the cgroup tree: jobs of one would talk to the other's controller. Refuse.
if [[ -L /etc/slurm/slurm.conf ]]; then
    other=$(dirname "$(readlink /etc/slurm/slurm.conf)")
    if [[ $other != "$STATE" && -f $other/.brainpipe-slurm ]]; then
        for pidfile in "$other"/pids/*.pid; do
            if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "[setup_slurm] another cluster from setup_slurm.sh is running ($other);" \
                     "stop it first: cluster/local_slurm/teardown_slurm.sh $other" >&2
                exit 1
            fi
        done
    fi
fi

# --- state directory -------------------------------------------------------------------
if [[ -e $STATE/pids ]] && ls "$STATE"/pids/*.pid >/dev/null 2>&1; then
    echo "[setup_slurm] $STATE already holds a running cluster; tear it down first" >&2
    exit 1
fi
mkdir -p "$STATE"/{pids,log,spool/ctld,spool/d,munge,mysql}
chmod 755 "$STATE"
chown munge:munge "$STATE/munge"
chmod 755 "$STATE/munge"  # munged: the socket directory must be searchable by all

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}
CTLD_PORT=$(free_port); SLURMD_PORT=$(free_port); DBD_PORT=$(free_port); DB_PORT=$(free_port)

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
DEF_MEM_PER_CPU=$(( MEM_MB / CPUS / 2 ))
MUNGE_SOCKET=/run/munge/munge.socket.2
DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

# Each daemon runs in the foreground of its own session, output to a log file (never to the
# caller's pipes), and its pid goes into pids/NN-name.pid (NN = start order).
start() {
    local order=$1 name=$2; shift 2
    setsid "$@" </dev/null >"$STATE/log/$name.out" 2>&1 &
    echo $! >"$STATE/pids/$order-$name.pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    while (( SECONDS < deadline )); do
        if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "timed out waiting for $what; logs:"
    tail -n 20 "$STATE"/log/* >&2 || true
    return 1
}

# --- munge -----------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
    chown munge:munge /etc/munge/munge.key
fi
# SLURM 22.05's client commands (sacctmgr) only talk to munged's default socket, so munged
# listens there. A munged that already answers on it (the machine's own) is used, not started.
if timeout 5 bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'" >/dev/null 2>&1; then
    log "using the munged already listening on $MUNGE_SOCKET"
else
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    chown munge:munge "$(dirname "$MUNGE_SOCKET")"
    chmod 755 "$(dirname "$MUNGE_SOCKET")"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    start 10 munged runuser -u munge -- /usr/sbin/munged --foreground --socket="$MUNGE_SOCKET" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    wait_for 20 munged bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
fi

# --- MariaDB (accounting storage) ------------------------------------------------------
log "initialising MariaDB in $STATE/mysql"
mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
    --skip-test-db >"$STATE/log/mariadb-install.out" 2>&1
start 20 mariadbd /usr/sbin/mariadbd --no-defaults --user=root --datadir="$STATE/mysql" \
    --socket="$STATE/mysql.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$STATE/mysql.pid" --log-error="$STATE/log/mariadb.err" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M
wait_for 60 mariadb mariadb --no-defaults -uroot --socket="$STATE/mysql.sock" -e "select 1"
mariadb --no-defaults -uroot --socket="$STATE/mysql.sock" <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

# --- what this machine allows: cgroup enforcement, fake GPUs --------------------------------
# Memory is enforced (a job over its --mem is killed, as on a real cluster) and every process
# of a job is tracked (no job step escapes scancel or a node failure) only with SLURM's cgroup
# plugins. SLURM 22.05 drives cgroup v1 by itself; its cgroup v2 plugin needs systemd (absent
# here). So: cgroup v1 when the memory and freezer hierarchies are mounted and writable,
# otherwise process tracking by /proc (proctrack/linuxproc) with no memory enforcement, said
# loudly and recorded in env.sh (BRAINPIPE_SLURM_CGROUP=none) for the tests.
cgroup_v1_usable() {
    local c probe
    for c in memory freezer; do
        mountpoint -q "/sys/fs/cgroup/$c" || return 1
        probe="/sys/fs/cgroup/$c/brainpipe-probe-$$"
        mkdir "$probe" 2>/dev/null || return 1
        rmdir "$probe"
    done
    [[ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]]
}
if [[ ${BRAINPIPE_SLURM_NO_CGROUP:-} != 1 ]] && cgroup_v1_usable; then
    CGROUP=v1
    PROCTRACK=proctrack/cgroup
    TASK_PLUGIN=task/cgroup
    ACCT_GATHER=jobacct_gather/cgroup
else
    CGROUP=none
    PROCTRACK=proctrack/linuxproc
    TASK_PLUGIN=task/none
    ACCT_GATHER=jobacct_gather/linux
    log "WARNING: no writable cgroup v1 memory+freezer hierarchy: memory is NOT enforced and"
    log "         processes are tracked by /proc only (proctrack/linuxproc)"
fi
if (( GPUS > 0 )); then
    NODE_GRES="Gres=gpu:$GPUS"
else
    NODE_GRES=""
fi

# --- configuration files, generated from this machine ----------------------------------
cat >"$STATE/slurm.conf" <<EOF
# Generated by cluster/local_slurm/setup_slurm.sh for $HOST ($CPUS CPUs, $MEM_MB MB)
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job (node DOWN) waits this long before it may start again (default
# 120 s); 30 s still leaves a loaded node time to launch a step with its credential
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=30
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=$PROCTRACK
TaskPlugin=$TASK_PLUGIN
JobAcctGatherType=$ACCT_GATHER
# MaxRSS sampled every second, so that sacct shows what short jobs used
JobAcctGatherFrequency=1
# A generic GPU resource, absent (--gpus 0: a job asking for a GPU is refused at sbatch) or
# present as N fake devices (--gpus N; see gres.conf below)
GresTypes=gpu
# ...and accounted, so that sacct's ReqTRES/AllocTRES show gres/gpu=N
AccountingStorageTRES=gres/gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
# A node set DOWN (scontrol update state=down, or lost) stays DOWN until an administrator
# resumes it (state=resume); a node that merely stopped answering returns when it answers.
ReturnToService=1
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/slurmdbd.conf"

if [[ $CGROUP == v1 ]]; then
    # A job's memory is its --mem (RAM; no swap on top), enforced by the kernel's OOM killer.
    cat >"$STATE/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupAutomount=no
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=yes
AllowedRAMSpace=100
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
else
    cat >"$STATE/cgroup.conf" <<EOF
# proctrack/linuxproc + task/none: no cgroup enforcement on this node (see setup_slurm.sh).
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF
fi
if (( GPUS > 0 )); then
    # slurmd ignores a GPU without a device file (the node then registers 0 GPUs and is set
    # INVAL), so each fake GPU is a character device under STATE with /dev/null's numbers (a
    # link to /dev/null where mknod is not allowed): never opened, only counted and allocated
    # (ConstrainDevices is off).
    mkdir -p "$STATE/dev"
    for (( i = 0; i < GPUS; i++ )); do
        [[ -e $STATE/dev/fakegpu$i ]] || mknod "$STATE/dev/fakegpu$i" c 1 3 2>/dev/null \
            || ln -s /dev/null "$STATE/dev/fakegpu$i"
    done
    cat >"$STATE/gres.conf" <<EOF
NodeName=$HOST Name=gpu Count=$GPUS File=$STATE/dev/fakegpu[0-$((GPUS - 1))]
EOF
else
    : >"$STATE/gres.conf"
fi

# Batch jobs do not see the caller's SLURM_CONF (the executor plugin clears SLURM_* inside
# jobs), so `srun` there reads the default path: point it at this cluster's file. An existing
# slurm.conf that is not one of ours is never replaced.
ETC_CONF=/etc/slurm/slurm.conf
if [[ -e $ETC_CONF || -L $ETC_CONF ]]; then
    target=$(readlink "$ETC_CONF" || true)
    if [[ $target != */slurm.conf || ! -f "$(dirname "$target")/.brainpipe-slurm" ]] \
            && [[ ! ( -L $ETC_CONF && ! -e $ETC_CONF ) ]]; then
        echo "[setup_slurm] $ETC_CONF exists and is not from setup_slurm.sh; not replacing it" >&2
        exit 1
    fi
fi
touch "$STATE/.brainpipe-slurm"
mkdir -p /etc/slurm
ln -sfn "$STATE/slurm.conf" "$ETC_CONF"

cat >"$STATE/env.sh" <<EOF
export SLURM_CONF=$STATE/slurm.conf
export BRAINPIPE_SLURM_CGROUP=$CGROUP
export BRAINPIPE_SLURM_GPUS=$GPUS
EOF
export SLURM_CONF=$STATE/slurm.conf

# --- SLURM daemons ---------------------------------------------------------------------
start 30 slurmdbd /usr/sbin/slurmdbd -D
wait_for 60 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=brainpipe Organization=brainpipe >/dev/null
sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

start 40 slurmctld /usr/sbin/slurmctld -D
wait_for 60 slurmctld scontrol ping
start 50 slurmd /usr/sbin/slurmd -D
wait_for 60 "node $HOST idle" bash -c "sinfo -h -N -o %t | grep -qx idle"

log "up: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT, node $HOST ($CPUS CPUs, $MEM_MB MB, $GPUS GPUs), cgroup $CGROUP"
log "source $STATE/env.sh to use it; stop with cluster/local_slurm/teardown_slurm.sh $STATE"
