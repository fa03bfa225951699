#!/usr/bin/env bash
# Stop the daemons that .ci/slurm-up.sh started (listed in $STATE/started), newest first, after
# cancelling the jobs still on the cluster. Daemons it did not start are left alone. Bounded:
# SIGTERM, up to 15 s, then SIGKILL.
set -uo pipefail

STATE=${TRACETUNE_SLURM_STATE:-/var/lib/tracetune-slurm}
STARTED=$STATE/started

log() { echo "slurm-down: $*" >&2; }

# Wait for pid $1 to exit, at most $2 seconds.
wait_gone() {
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

stop() {
    local name=$1 pid=$2
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name"* ]] || return 0   # gone or pid reused
    kill -TERM "$pid" 2>/dev/null
    wait_gone "$pid" 15 || { log "$name ($pid) ignored SIGTERM, killing"; kill -KILL "$pid" 2>/dev/null; wait_gone "$pid" 5; }
    log "stopped $name ($pid)"
}

[[ -s $STARTED ]] || { log "nothing recorded in $STARTED"; exit 0; }

if grep -q '^slurmctld ' "$STARTED"; then
    # Jobs left by an interrupted test would keep slurmstepd and their processes alive.
    timeout 10 scancel --full --cluster=tracetune --user=root 2>/dev/null
    timeout 10 scancel --cluster=tracetune --user=root 2>/dev/null
fi

tac "$STARTED" | while read -r name pid; do
    stop "$name" "$pid"
done
rm -f "$STARTED"
