#!/usr/bin/env bash
# A real single-node SLURM cluster (slurmctld + slurmd + slurmdbd accounting) for tests and CI.
#
#   slurm/local_cluster.sh start  [STATE_DIR]   start it (no-op when it runs); prints the export line
#   slurm/local_cluster.sh stop   [STATE_DIR]   cancel jobs, stop every daemon by its PID file
#   slurm/local_cluster.sh status [STATE_DIR]   one line per daemon; exit 0 only when all five run
#   slurm/local_cluster.sh env    [STATE_DIR]   print the export line
#
# Use: eval "$(slurm/local_cluster.sh start)"   (progress goes to stderr, the export to stdout)
# Needs root on Debian 12 without systemd (the facts behind it: slurm/README.md). Exit status 2
# means "this machine cannot host it" (not root, no apt-get, packages not installable).
# Everything (configs, munge key, MariaDB datadir, spool, logs, PID files) lives under
# STATE_DIR (default /tmp/study-slurm); wiping it resets the cluster, job ids restart at 1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CMD="${1:-}"
STATE_DIR="$(realpath -m "${2:-/tmp/study-slurm}")"
CONF="$STATE_DIR/slurm.conf"
CLUSTER="study"
# Slurm's default ports; override to run two state dirs side by side.
CTLD_PORT="${STUDY_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${STUDY_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${STUDY_SLURM_DBD_PORT:-6819}"
# Advertised CPUs, independent of the real core count (SlurmdParameters=config_overrides).
CPUS="${STUDY_SLURM_CPUS:-8}"
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sacctmgr sacct sinfo munged mungekey mariadbd
    mariadb-install-db mariadb-admin)
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MYSQL_DIR="$STATE_DIR/mysql"
MYSQL_SOCKET="$MYSQL_DIR/mysqld.sock"
# The daemons in start order; stop goes the other way.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

export SLURM_CONF="$CONF"

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }
unsupported() { log "cannot run here: $*"; exit 2; }

pidfile_of() {
    case "$1" in
        munged) echo "$MUNGE_DIR/munged.pid" ;;
        mariadbd) echo "$MYSQL_DIR/mysqld.pid" ;;
        *) echo "$STATE_DIR/run/$1.pid" ;;
    esac
}

logfile_of() {
    case "$1" in
        munged) echo "$MUNGE_DIR/munged.log" ;;
        mariadbd) echo "$MYSQL_DIR/mysqld.log" ;;
        *) echo "$STATE_DIR/log/$1.log" ;;
    esac
}

# True while PID runs. A daemon's parent is pid 1, which may reap it only seconds after it
# exits (2 s on this VM), so a zombie counts as exited.
alive() {
    local state
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 1)"
    [[ -n "$state" && "$state" != Z ]]
}

# Prints the daemon's pid when its PID file names a live process of that name (a stale file
# from a crashed run may name a recycled pid, hence the comm check).
running_pid() {
    local pidfile pid
    pidfile="$(pidfile_of "$1")"
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && alive "$pid" || return 1
    echo "$pid"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
    local deadline=$((SECONDS + $1)) what="$2"
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    log "$what"
}

fail_with_log() {
    local logfile
    logfile="$(logfile_of "$1")"
    log "last lines of $logfile:"
    tail -n 20 "$logfile" >&2 2>/dev/null || true
    die "$2"
}

print_export() { echo "export SLURM_CONF=$CONF"; }

ensure_packages() {
    local missing=() b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || unsupported "missing ${missing[*]} and no apt-get (Debian)"
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # Try without `apt-get update` first: the lists are usually fresh enough and update is slow.
    if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}" >&2; then
        apt-get update >&2 && apt-get install -y --no-install-recommends "${PACKAGES[@]}" >&2 ||
            unsupported "apt-get install ${PACKAGES[*]} failed"
    fi
}

render() {
    local template="$1" dest="$2" node memory tmp
    node="$(hostname -s)"
    # RealMemory must not exceed what slurmd detects; fall back to a modest 1 GB.
    memory="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
    tmp="$dest.tmp"
    sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$node|g" -e "s|@NODE@|$node|g" \
        -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEMORY_MB@|${memory:-1024}|g" "$template" >"$tmp"
    if grep -q '@[A-Z_]*@' "$tmp"; then
        die "unsubstituted variable in $tmp: $(grep -o '@[A-Z_]*@' "$tmp" | head -n 1)"
    fi
    # Replace only on change, so a running cluster never sees its config rewritten under it.
    if cmp -s "$tmp" "$dest"; then rm -f "$tmp"; else mv "$tmp" "$dest"; fi
}

prepare_dirs() {
    mkdir -p "$STATE_DIR"/{run,log,ctld,spool} "$MUNGE_DIR" "$MYSQL_DIR"
    # munged refuses group/world-writable or foreign-owned dirs ("insecure"); the socket dir
    # stays world-readable so any user's job can reach the socket.
    chown munge:munge "$MUNGE_DIR"
    chmod 0755 "$MUNGE_DIR"
    chown mysql:mysql "$MYSQL_DIR"
    render "$HERE/slurm.conf.in" "$CONF"
    render "$HERE/slurmdbd.conf.in" "$STATE_DIR/slurmdbd.conf"
    # slurmdbd refuses a config readable by others (it could hold the DB password).
    chmod 0600 "$STATE_DIR/slurmdbd.conf"
}

start_munged() {
    running_pid munged >/dev/null && return 0
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        runuser -u munge -- mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    fi
    # munged refuses to run as root ("Logfile is insecure"), hence the munge user.
    runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" \
        --key-file="$MUNGE_DIR/munge.key" --pid-file="$(pidfile_of munged)" \
        --log-file="$(logfile_of munged)" --seed-file="$MUNGE_DIR/munged.seed" 9>&- ||
        fail_with_log munged "munged did not start"
    wait_for 10 "munged up" munge --socket="$MUNGE_SOCKET" --no-input ||
        fail_with_log munged "munged does not answer on $MUNGE_SOCKET"
}

start_mariadb() {
    running_pid mariadbd >/dev/null && return 0
    if [[ ! -d "$MYSQL_DIR/data/mysql" ]]; then
        log "initialising the MariaDB datadir"
        # unix_socket auth: the system root user (slurmdbd) logs in as MariaDB root, no password.
        mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$MYSQL_DIR/install.log" 2>&1 ||
            { tail -n 20 "$MYSQL_DIR/install.log" >&2; die "mariadb-install-db failed"; }
    fi
    # --no-defaults: ignore /etc/mysql so a system MariaDB cannot interfere; no TCP port.
    # innodb_lock_wait_timeout=900 is what slurmdbd asks for; the rest trades durability
    # (irrelevant for a throwaway test DB) for a faster start. slurmdbd still logs "settings
    # not recommended: innodb_buffer_pool_size" (it wants GBs); harmless at this scale.
    setsid mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" \
        --socket="$MYSQL_SOCKET" --pid-file="$(pidfile_of mariadbd)" \
        --log-error="$(logfile_of mariadbd)" --skip-networking --skip-log-bin \
        --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
        --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 9>&- &
    wait_for 60 "mariadb up" mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" ping ||
        fail_with_log mariadbd "MariaDB did not come up"
}

start_slurmdbd() {
    if ! running_pid slurmdbd >/dev/null; then
        # slurmdbd passes no socket to the MySQL client library, which then reads this variable.
        MYSQL_UNIX_PORT="$MYSQL_SOCKET" slurmdbd 9>&- || fail_with_log slurmdbd "slurmdbd did not start"
    fi
    wait_for 60 "slurmdbd up" timeout 10 sacctmgr -n -P list cluster format=cluster ||
        fail_with_log slurmdbd "slurmdbd does not answer on port $DBD_PORT"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        # Adding the cluster also gives root an association in the root account.
        sacctmgr -i add cluster "$CLUSTER" >&2 || die "sacctmgr add cluster $CLUSTER failed"
    fi
}

node_up() {
    local state
    state="$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null)"
    [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]]
}

start_slurm() {
    if ! running_pid slurmctld >/dev/null; then
        slurmctld -f "$CONF" 9>&- || fail_with_log slurmctld "slurmctld did not start"
    fi
    if ! running_pid slurmd >/dev/null; then
        slurmd -f "$CONF" -N "$(hostname -s)" 9>&- || fail_with_log slurmd "slurmd did not start"
    fi
    wait_for 60 "node $(hostname -s) up" node_up || fail_with_log slurmd "node not idle: $(sinfo 2>&1)"
    wait_for 30 "sacct answers" timeout 10 sacct -n -a -X -S now ||
        fail_with_log slurmdbd "sacct does not answer"
}

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do running_pid "$d" >/dev/null || return 1; done
}

cmd_start() {
    [[ "$(id -u)" == 0 ]] || unsupported "must run as root (munge, MariaDB and slurmd switch users)"
    ensure_packages
    mkdir -p "$STATE_DIR"
    # Serialise concurrent starts (e.g. several pytest workers) on the same state dir.
    # Daemons are started with 9>&-: one that inherited the lock would hold it forever.
    exec 9>"$STATE_DIR/.lock"
    flock 9
    if all_running && node_up; then
        print_export
        return 0
    fi
    local t0=$SECONDS
    prepare_dirs
    start_munged
    start_mariadb
    start_slurmdbd
    start_slurm
    log "cluster '$CLUSTER' up in $((SECONDS - t0)) s; state in $STATE_DIR"
    print_export
}

stop_daemon() {
    local pid deadline
    pid="$(running_pid "$1")" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
        log "$1 ($pid) ignored SIGTERM for 20 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$1 stopped"
}

cmd_stop() {
    [[ -d "$STATE_DIR" ]] || return 0
    exec 9>"$STATE_DIR/.lock"
    flock 9
    # Batch scripts run under slurmstepd, which outlives slurmd: cancel them or they leak.
    if running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null; then
        local jobs
        jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')" || true
        if [[ -n "${jobs// /}" ]]; then
            log "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs || true
            wait_for 15 "jobs cancelled" test -z "$(squeue -h -o %A 2>/dev/null)" || true
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
}

cmd_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        if pid="$(running_pid "$d")"; then
            echo "$d: running (pid $pid)"
        else
            echo "$d: stopped"
            rc=1
        fi
    done
    return "$rc"
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_export ;;
    *)
        echo "usage: $0 start|stop|status|env [STATE_DIR]" >&2
        exit 64
        ;;
esac
