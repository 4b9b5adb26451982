# shellcheck shell=bash
# lib.sh — helpers shared by the broker scripts of the e2e harness. Source it; don't run it.
#
# Contract for a broker script (kafka.sh, rabbitmq.sh, and any later <broker>.sh in this
# directory, which all.sh picks up automatically):
#   start    install what is missing, start on loopback, wait until ready; already running → ok
#   stop     stop the processes for real (pid files), no-op when not running
#   restart  stop + start, keeping data ("broker restart mid-stream")
#   reset    stop + wipe data + start
#   status   exit 0 and say so when running and ready, exit 1 otherwise
#   env      print `export MQSIDECAR_E2E_<BROKER>=...` lines for the tests
#
# Everything lives under $MQSIDECAR_E2E_DIR (default /tmp/mqsidecar-e2e)/<broker>/; downloaded
# artifacts are cached under $MQSIDECAR_CACHE (default ~/.cache/mqsidecar).

set -euo pipefail

# shellcheck disable=SC2034 # used by the scripts that source this file
HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_DIR=${MQSIDECAR_E2E_DIR:-/tmp/mqsidecar-e2e}
# shellcheck disable=SC2034 # used by the scripts that source this file
CACHE_DIR=${MQSIDECAR_CACHE:-${HOME:-/root}/.cache/mqsidecar}
# Loopback only: nothing in the harness ever listens on another address.
E2E_HOST=127.0.0.1

# log MSG... — progress to stderr, prefixed with the calling script's name, so that `env`
# output on stdout stays clean for eval.
log() { printf '[%s] %s\n' "${HARNESS_NAME:-harness}" "$*" >&2; }

# die MSG... — log and exit 1.
die() { log "ERROR: $*"; exit 1; }

# now_ms — wall clock in milliseconds (for the timings the scripts report).
now_ms() { date +%s%3N; }

# elapsed_since START_MS — "12.3s".
elapsed_since() {
	local d=$(( $(now_ms) - $1 ))
	printf '%d.%01ds' $((d / 1000)) $(((d % 1000) / 100))
}

# log_tail FILE [LINES] — print the end of a log to stderr; used whenever a start fails so the
# cause is in the CI output, not only in a file that dies with the machine.
log_tail() {
	local f=$1 n=${2:-60}
	if [[ -s $f ]]; then
		log "---- last $n lines of $f ----"
		tail -n "$n" "$f" >&2 || true
		log "---- end of $f ----"
	else
		log "(log $f is missing or empty)"
	fi
}

# wait_for TIMEOUT_S DESCRIPTION CMD... — run CMD every 0.5 s until it succeeds or TIMEOUT_S
# passes. Returns 1 on timeout. CMD is a command (often a function), not a string to eval.
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$(( $(date +%s) + timeout ))
	while true; do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		if (( $(date +%s) >= deadline )); then
			log "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}

# port_open PORT [HOST] — true when something accepts TCP connections there.
port_open() {
	local port=$1 host=${2:-$E2E_HOST}
	(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# pid_alive PID [MARKER] — true when PID runs and, if MARKER is given, its command line contains
# MARKER (guards against a recycled pid from a stale pid file).
pid_alive() {
	local pid=$1 marker=${2:-}
	[[ -n $pid && $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	# A zombie whose threads have all exited is not running (nobody may reap it: our brokers are
	# reparented to pid 1, which in a container need not reap). While other threads still exit,
	# the leader already shows Z but the process still holds its files and ports: still running
	# (its command line reads empty by then, so the marker cannot be checked).
	if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
		local threads
		threads=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
		(( threads > 1 ))
		return
	fi
	if [[ -n $marker ]]; then
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
	fi
	return 0
}

# pidfile_alive PIDFILE [MARKER] — pid_alive for the pid stored in PIDFILE.
pidfile_alive() {
	local f=$1
	[[ -f $f ]] || return 1
	pid_alive "$(tr -dc '0-9' <"$f")" "${2:-}"
}

# pid_gone PID — true once PID has exited (a fully exited zombie counts as gone).
pid_gone() { ! pid_alive "$1"; }

# stop_pid PID TIMEOUT_S [MARKER] — SIGTERM, wait up to TIMEOUT_S, then SIGKILL and wait.
# Returns 0 once the process is gone.
stop_pid() {
	local pid=$1 timeout=$2 marker=${3:-}
	pid_alive "$pid" "$marker" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_for "$timeout" "pid $pid to exit after SIGTERM" pid_gone "$pid"; then
		log "pid $pid ignored SIGTERM for ${timeout}s; sending SIGKILL"
		kill_pid_hard "$pid"
	fi
}

# kill_pid_hard PID [MARKER] — SIGKILL (a broker crash, for chaos tests) and wait until gone.
kill_pid_hard() {
	local pid=$1 marker=${2:-}
	pid_alive "$pid" "$marker" || return 0
	kill -KILL "$pid" 2>/dev/null || true
	wait_for 10 "pid $pid to exit after SIGKILL" pid_gone "$pid"
}

# spawn_bg PIDFILE LOGFILE CMD... — start CMD in its own session (so a test runner killing its
# process group, or the calling shell exiting, does not take the broker down), stdin from
# /dev/null, stdout+stderr appended to LOGFILE, the lock fd (9, see with_lock) closed so the
# broker does not hold the lock forever, and write its pid to PIDFILE.
spawn_bg() {
	local pidfile=$1 logfile=$2
	shift 2
	rm -f "$pidfile"
	# The inner bash writes its own pid and then execs CMD, so the pid file holds CMD's pid
	# whether or not setsid had to fork.
	# shellcheck disable=SC2016 # $$ and $@ belong to the inner bash
	setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
	# Wait (briefly) for the pid file so callers can rely on it.
	wait_for 10 "pid file $pidfile" test -s "$pidfile"
}

# with_lock NAME — serialise start/stop/reset of one broker across concurrent callers (e.g.
# all.sh and a test both calling start). Holds the lock until the calling script exits.
with_lock() {
	local name=$1
	mkdir -p "$E2E_DIR"
	exec 9>"$E2E_DIR/.$name.lock"
	if ! flock -w 600 9; then
		die "could not take the lock $E2E_DIR/.$name.lock within 600s"
	fi
}

# port_closed PORT — true when nothing accepts connections on PORT any more.
port_closed() { ! port_open "$1"; }

# wait_ports_closed PORT... — after a stop, wait until the ports are really released so that an
# immediate start does not trip over them.
wait_ports_closed() {
	local p
	for p in "$@"; do
		wait_for 15 "port $p to close" port_closed "$p" || return 1
	done
}

# check_port_free PORT WHAT — fail clearly when a port we are about to use is taken by
# someone else (an old broker from another checkout, a system service…).
check_port_free() {
	local port=$1 what=$2
	if port_open "$port"; then
		die "port $port ($what) on $E2E_HOST is already in use by another process; stop it or choose another port (see README.md)"
	fi
}

# java_heap_flags MAX [MIN] — JVM flags for a small broker on a shared 2-core machine: a
# bounded heap, the serial collector (no parallel GC threads fighting the other processes),
# headless. MAX/MIN are JVM sizes such as 512m.
java_heap_flags() {
	local max=$1 min=${2:-128m}
	printf '%s\n' "-Xms$min" "-Xmx$max" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
		-Djava.awt.headless=true
}

# java_tool_flags — JVM flags for short-lived CLI tools: fast start, small heap.
java_tool_flags() {
	printf '%s\n' -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
		-Djava.awt.headless=true
}

# sudo_if_needed CMD... — run as root (we are root on CI; sudo elsewhere when available).
sudo_if_needed() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

# apt_install PKG... — install Debian packages, waiting for the dpkg/apt locks when another
# apt run is in progress instead of failing.
apt_install() {
	local pkgs=("$@") attempt
	export DEBIAN_FRONTEND=noninteractive
	local -a opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
	for attempt in 1 2 3; do
		if sudo_if_needed apt-get "${opts[@]}" -y -q install --no-install-recommends "${pkgs[@]}"; then
			return 0
		fi
		log "apt-get install ${pkgs[*]} failed (attempt $attempt); running apt-get update and retrying"
		sudo_if_needed apt-get "${opts[@]}" -q update || true
		sleep 2
	done
	die "apt-get install ${pkgs[*]} failed"
}

# need_cmd CMD APT_PACKAGE — make sure CMD exists, installing APT_PACKAGE when it does not.
need_cmd() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null 2>&1 && return 0
	log "$cmd not found; installing $pkg with apt-get"
	apt_install "$pkg"
	command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
}

# maven_fetch POM OUTDIR — resolve the runtime dependencies of POM into OUTDIR (flat jars) with
# maven-dependency-plugin:copy-dependencies. OUTDIR is complete only when OUTDIR/.complete holds
# the POM's checksum; then Maven is skipped entirely (warm start costs nothing). The copy goes to
# a temporary directory first and is moved into place, so an interrupted download never leaves a
# half-filled OUTDIR that looks complete. MQSIDECAR_MAVEN_ARGS adds Maven arguments (e.g.
# -Dmaven.repo.local=DIR).
maven_fetch() {
	local pom=$1 out=$2 sum
	sum=$(sha256sum "$pom" | awk '{print $1}')
	if [[ -f $out/.complete && $(cat "$out/.complete") == "$sum" ]]; then
		return 0
	fi
	need_cmd java openjdk-17-jre-headless
	need_cmd mvn maven
	local t0 tmp
	t0=$(now_ms)
	mkdir -p "$(dirname "$out")"
	tmp=$(mktemp -d "$(dirname "$out")/.fetch.XXXXXX")
	log "resolving $(basename "$(dirname "$pom")") jars with Maven into $out (first run only)"
	# shellcheck disable=SC2086 # MQSIDECAR_MAVEN_ARGS is a list of words on purpose.
	if ! mvn -B -q -f "$pom" ${MQSIDECAR_MAVEN_ARGS:-} \
		-DoutputDirectory="$tmp" dependency:copy-dependencies >"$tmp.mvn.log" 2>&1; then
		log_tail "$tmp.mvn.log" 80
		rm -rf "$tmp"
		die "maven could not resolve $pom (log kept at $tmp.mvn.log)"
	fi
	rm -f "$tmp.mvn.log"
	echo "$sum" >"$tmp/.complete"
	rm -rf "$out"
	mv "$tmp" "$out"
	log "jars ready in $out ($(find "$out" -name '*.jar' | wc -l) jars, $(elapsed_since "$t0"))"
}

# lifecycle_verbs NAME DIR — defines the verbs start, stop, kill, restart [--hard] and reset
# (stop, wipe DIR, start) for a broker script that defines do_start, do_stop and do_kill;
# each holds the broker's lock (with_lock NAME).
lifecycle_verbs() {
	LIFECYCLE_NAME=$1
	LIFECYCLE_DIR=$2
	cmd_start() { with_lock "$LIFECYCLE_NAME"; do_start; }
	cmd_stop() { with_lock "$LIFECYCLE_NAME"; do_stop; }
	cmd_kill() { with_lock "$LIFECYCLE_NAME"; do_kill; }
	cmd_restart() {
		with_lock "$LIFECYCLE_NAME"
		if [[ ${1:-} == --hard ]]; then
			do_kill
		else
			do_stop
		fi
		do_start
	}
	cmd_reset() {
		with_lock "$LIFECYCLE_NAME"
		do_stop
		log "wiping $LIFECYCLE_DIR"
		rm -rf "$LIFECYCLE_DIR"
		do_start
	}
}

# run_verb VERB ARGS... — dispatch to the calling script's cmd_<verb> function.
run_verb() {
	local verb=${1:-}
	shift || true
	if [[ -z $verb ]] || ! declare -F "cmd_$verb" >/dev/null; then
		usage >&2
		exit 2
	fi
	"cmd_$verb" "$@"
}
