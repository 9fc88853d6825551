#!/usr/bin/env bash
# Stop the daemons started by start.sh, newest first, by the PIDs in their pid files.
set -uo pipefail
stop_pidfile() {
  local pidfile=$1 pid i
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for i in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}
stop_pidfile /run/slurmd.pid
stop_pidfile /run/slurmctld.pid
stop_pidfile /run/slurmdbd.pid
if [[ -f /run/mysqld/mysqld.pid ]]; then /etc/init.d/mariadb stop >/dev/null 2>&1; fi
stop_pidfile /run/munge/munged.pid
echo "slurm-localhost: stopped"
