#!/usr/bin/env bash
# Stop the daemons slurm_up.sh started (and only those), newest first.
set -uo pipefail
STATE=${SLURM_TEST_STATE:-/run/updatelab-slurm}
[ -f "$STATE/started" ] || exit 0
pidfile() {
    case $1 in
        munged) echo /run/munge/munged.pid ;;
        slurmctld) echo /run/slurmctld.pid ;;
        slurmd) echo /run/slurmd.pid ;;
    esac
}
for d in $(tac "$STATE/started"); do
    pid=$(cat "$(pidfile "$d")" 2>/dev/null) || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "slurm_down: stopped $d ($pid)"
done
rm -f "$STATE/started"
