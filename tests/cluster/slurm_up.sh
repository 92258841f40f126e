#!/usr/bin/env bash
# A one-node SLURM on this machine (Debian's slurm-wlm + munge), for `make test-cluster`.
# Needs root. Installs the packages if missing, writes a munge key and a slurm.conf if there is
# none, starts munged, slurmctld and slurmd (only those not already running; the ones started
# are listed in $STATE/started for slurm_down.sh) and waits until the node is idle.
set -euo pipefail
STATE=${SLURM_TEST_STATE:-/run/updatelab-slurm}
NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
MARK="# written by updatelab tests/cluster/slurm_up.sh"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null; then
    echo "slurm_up: installing slurmctld slurmd slurm-client munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$STATE" /etc/munge /run/munge /var/log/munge /var/lib/munge /etc/slurm \
         /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
: > "$STATE/started"
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key

if [ ! -e "$CONF" ] || grep -qF "$MARK" "$CONF"; then
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {m = int($2 / 1024 * 0.8); print (m > 20000 ? 20000 : m)}' /proc/meminfo)
    cat > "$CONF" <<CONF
$MARK
ClusterName=updatelab
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
fi

running() { pgrep -x "$1" >/dev/null; }
if ! running munged; then
    runuser -u munge -- munged && echo munged >> "$STATE/started"   # as Debian's service runs it
fi
if ! running slurmctld; then
    slurmctld -c && echo slurmctld >> "$STATE/started"   # -c: no jobs left over from an earlier run
fi
if ! running slurmd; then
    slurmd && echo slurmd >> "$STATE/started"
fi

for _ in $(seq 60); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm_up: node $NODE not idle after 60 s" >&2
sinfo -N -l >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
