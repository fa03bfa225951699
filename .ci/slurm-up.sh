#!/usr/bin/env bash
# Start a throwaway single-node SLURM cluster on this machine (as root), for tests/test_slurm.py and CI:
# munged, MariaDB, slurmdbd, slurmctld and `slurmd -N localhost`, with a fake 2-GPU GRES.
# Follows ../shared/notes/slurm-local.md. Installs the Debian packages when they are missing.
#
#   .ci/slurm-up.sh                 install if needed, start what is not running, check with srun
#   .ci/slurm-up.sh --install-only  only the apt install (lets CI time it separately)
#
# Idempotent: a daemon that already runs is left alone. Each daemon this script starts is appended
# to $STATE/started ("name pid"); .ci/slurm-down.sh stops exactly those. Every wait has a timeout,
# so the script fails instead of hanging.
set -euo pipefail

STATE=${TRACETUNE_SLURM_STATE:-/var/lib/tracetune-slurm}
CLUSTER=tracetune
ACCOUNT=tracetune
PARTITION=gpu
MARKER="# written by tracetune .ci/slurm-up.sh"
DB_SOCKET=/run/mysqld/mysqld.sock

log() { echo "slurm-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Poll a command until it succeeds, at most $1 seconds.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready after ${limit}s (logs in $STATE)"
        sleep 0.5
    done
}

# True when the pid in file $1 is alive and runs program $2.
running() {
    local pid
    [[ -s $1 ]] && pid=$(<"$1") && [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$2"* ]]
}

record() { echo "$1 $(<"$2")" >>"$STATE/started"; log "started $1 (pid $(<"$2"))"; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null \
        && command -v munged >/dev/null && command -v mariadbd >/dev/null && return
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing"
    log "installing slurm-wlm munge slurmdbd mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -q >/dev/null
    timeout 600 apt-get install -y -q \
        slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

write_configs() {
    local conf=/etc/slurm/slurm.conf
    if [[ -e $conf ]] && ! grep -qxF "$MARKER" "$conf"; then
        die "$conf exists and was not written by this script; refusing to replace a real cluster's config"
    fi
    mkdir -p /etc/slurm /srv/fakegpu "$STATE"/{statesave,spool}
    # Fake GPUs: slurmd only needs character devices to hand out (c 1 3 is /dev/null's).
    for i in 0 1; do
        [[ -c /srv/fakegpu/nvidia$i ]] || mknod /srv/fakegpu/nvidia$i c 1 3
    done
    # The node's real size, so it is not marked INVAL; a little memory is kept for the OS.
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$conf" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/statesave
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups in containers: track processes by parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that ask no memory would otherwise get the whole node and run one at a time.
DefMemPerCPU=2000
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
KillWait=5
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # A count-only gres.conf makes the node INVAL: name device files and turn autodetection off.
    cat >/etc/slurm/gres.conf <<EOF
$MARKER
AutoDetect=off
NodeName=localhost Name=gpu File=/srv/fakegpu/nvidia[0-1]
EOF
}

start_munge() {
    running /run/munge/munged.pid munged && return
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    timeout 20 runuser -u munge -- munged
    wait_for 10 munged bash -c 'munge -n | unmunge'
    record munged /run/munge/munged.pid
}

start_mariadb() {
    local pidfile=/run/mysqld/mysqld.pid
    running $pidfile mariadbd && return
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || timeout 120 mariadb-install-db --user=mysql >/dev/null
    setsid mariadbd --user=mysql --bind-address=127.0.0.1 --socket=$DB_SOCKET \
        --pid-file=$pidfile --log-error="$STATE/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb-admin --socket=$DB_SOCKET ping
    wait_for 10 "mariadbd pid file" test -s $pidfile
    record mariadbd $pidfile
}

# slurmdbd's database user gets a fresh random password on every start; it lives only in slurmdbd.conf.
start_slurmdbd() {
    running "$STATE/slurmdbd.pid" slurmdbd && return
    local password
    password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    timeout 30 mariadb --socket=$DB_SOCKET <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    install -m 600 /dev/null /etc/slurm/slurmdbd.conf
    cat >/etc/slurm/slurmdbd.conf <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$password
EOF
    timeout 30 slurmdbd
    wait_for 60 slurmdbd timeout 5 sacctmgr -n list cluster
    record slurmdbd "$STATE/slurmdbd.pid"
}

# Cluster, account and root's association; "already exists" is fine (exit status 1, nothing to do).
add_accounting() {
    timeout 20 sacctmgr -i add cluster $CLUSTER >/dev/null || true
    timeout 20 sacctmgr -i add account $ACCOUNT Cluster=$CLUSTER Description=tests >/dev/null || true
    timeout 20 sacctmgr -i add user root Account=$ACCOUNT Cluster=$CLUSTER >/dev/null || true
    timeout 20 sacctmgr -n -P list assoc cluster=$CLUSTER account=$ACCOUNT user=root format=user \
        | grep -qx root || die "no association root/$ACCOUNT in slurmdbd"
}

start_slurmctld() {
    running "$STATE/slurmctld.pid" slurmctld && return
    # -c: a throwaway cluster starts with no remembered jobs or node states.
    timeout 30 slurmctld -c
    wait_for 30 slurmctld timeout 5 scontrol ping
    record slurmctld "$STATE/slurmctld.pid"
}

start_slurmd() {
    running "$STATE/slurmd.pid" slurmd && return
    # The machine's hostname is not the node name.
    timeout 30 slurmd -N localhost
    wait_for 10 "slurmd pid file" test -s "$STATE/slurmd.pid"
    record slurmd "$STATE/slurmd.pid"
}

node_ready() {
    [[ $(sinfo -h -n localhost -o %T 2>/dev/null) =~ ^(idle|mixed|allocated|completing) ]]
}

check_gpu_job() {
    wait_for 60 "node localhost (state: $(sinfo -h -n localhost -o %T 2>/dev/null))" node_ready
    local devices
    # --immediate: fail at once instead of queueing forever if the node cannot take the job.
    devices=$(timeout 60 srun --immediate=30 -N1 -n1 --gres=gpu:1 -A $ACCOUNT \
        bash -c 'echo "$CUDA_VISIBLE_DEVICES"') || die "test job with --gres=gpu:1 failed"
    [[ -n $devices ]] || die "test job got no CUDA_VISIBLE_DEVICES"
    log "ready: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT, test job saw CUDA_VISIBLE_DEVICES=$devices"
}

main() {
    [[ $(id -u) == 0 ]] || die "must run as root (it installs packages and starts system daemons)"
    install_packages
    [[ ${1:-} == --install-only ]] && return
    write_configs
    touch "$STATE/started"
    start_munge
    start_mariadb
    start_slurmdbd
    add_accounting
    start_slurmctld
    start_slurmd
    check_gpu_job
}

main "$@"
