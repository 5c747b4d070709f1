#!/usr/bin/env bash
# Stop every daemon cluster/local_slurm/setup_slurm.sh started for STATE_DIR, newest first, and
# wait until each is gone. Safe to run twice and on a half-started cluster.
#
#   cluster/local_slurm/teardown_slurm.sh STATE_DIR [--remove]    (--remove: delete STATE_DIR too)
set -uo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 STATE_DIR [--remove]" >&2; exit 2; }
STATE=$(realpath -m "$1")
REMOVE=${2:-}

alive() { kill -0 "$1" 2>/dev/null; }

stop() {  # stop PID NAME: SIGTERM, then SIGKILL after 20 s
    local pid=$1 name=$2
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 80); do alive "$pid" || { echo "[teardown_slurm] stopped $name ($pid)" >&2; return 0; }; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null
    echo "[teardown_slurm] killed $name ($pid)" >&2
}

if [[ -d $STATE/pids ]]; then
    # Cancel anything still queued or running on this cluster first.
    if [[ -f $STATE/slurm.conf ]]; then
        SLURM_CONF=$STATE/slurm.conf timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
    fi
    for file in $(ls -1 "$STATE"/pids/*.pid 2>/dev/null | sort -r); do
        name=$(basename "$file" .pid); name=${name#*-}
        stop "$(cat "$file")" "$name"
        rm -f "$file"
    done
fi
# Daemons that forked on their own also wrote pid files (munged via runuser).
for file in "$STATE"/munge/munged.pid "$STATE"/slurmd.pid "$STATE"/slurmctld.pid \
            "$STATE"/slurmdbd.pid "$STATE"/mysql.pid; do
    [[ -f $file ]] && stop "$(cat "$file")" "$(basename "$file" .pid)"
done
# The /etc/slurm/slurm.conf link setup_slurm.sh made, if it still points here.
if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$STATE/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
if [[ $REMOVE == --remove ]]; then
    rm -rf "$STATE"
fi
exit 0
