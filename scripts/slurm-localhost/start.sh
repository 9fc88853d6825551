#!/usr/bin/env bash
# Install (apt), configure and start a one-node SLURM cluster on localhost, as root; safe to run twice.
# Used by tests/test_slurm.py and .ci/run. Daemons: munged, slurmctld, slurmd (+ MariaDB and slurmdbd with
# SLURM_ACCOUNTING=slurmdbd, so that `sacct` works). Without accounting, run Snakemake's SLURM plugin with
# --slurm-status-command squeue, or it polls a failing sacct forever.
set -euo pipefail
accounting=${SLURM_ACCOUNTING:-none}
state=${SLURM_STATE_DIR:-/var/lib/slurm/localhost-state}
node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_until() {
  local i
  for i in $(seq 120); do
    if bash -c "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "start.sh: gave up waiting for: $1" >&2
  return 1
}

[[ $(id -u) == 0 ]] || { echo "start.sh: must run as root" >&2; exit 1; }
mkdir -p "$state" /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm

packages=(slurm-wlm munge)
[[ $accounting == slurmdbd ]] && packages+=(slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
if ((${#missing[@]})); then
  apt-get update -q >/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm

# munge: the authentication every daemon and client uses
[[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 600 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
if ! running /run/munge/munged.pid; then
  su -s /bin/sh munge -c /usr/sbin/munged
  wait_until 'munge -n | unmunge'
fi

if [[ $accounting == slurmdbd ]]; then
  storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  storage="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat >"$state/slurm.conf" <<CONF
ClusterName=localcluster
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
${storage}
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
Waittime=0
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
CONF
restart=0
if ! cmp -s "$state/slurm.conf" /etc/slurm/slurm.conf; then
  cp "$state/slurm.conf" /etc/slurm/slurm.conf
  restart=1
fi

if [[ $accounting == slurmdbd ]]; then
  running /run/mysqld/mysqld.pid || /etc/init.d/mariadb start >/dev/null
  wait_until 'mysqladmin -u root ping'
  mysql -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm-localhost
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf
  running /run/slurmdbd.pid || slurmdbd
  wait_until 'sacctmgr -n list cluster'
  sacctmgr -n -P list cluster format=cluster | grep -qx localcluster || sacctmgr -i add cluster localcluster >/dev/null
fi

if ((restart)); then
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      wait_until "! kill -0 $pid"
    fi
  done
fi
running /run/slurmctld.pid || slurmctld
wait_until 'scontrol ping | grep -q UP'
running /run/slurmd.pid || slurmd -N "$node"
wait_until "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
sinfo
