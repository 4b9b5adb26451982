#!/usr/bin/env bash
# rocketmq.sh — a RocketMQ 5.3.x name server + broker for the e2e tests, on loopback, from the
# Maven Central jars (no Docker, no distribution zip).
#
#   rocketmq.sh start            install what is missing, start both, wait for "boot success"
#   rocketmq.sh stop             stop both (pid files), no-op when not running
#   rocketmq.sh restart          stop + start, keeping the store ("broker restart mid-stream")
#   rocketmq.sh restart-broker   stop + start the broker only (name server keeps running)
#   rocketmq.sh reset            stop + wipe the store + start
#   rocketmq.sh status           exit 0 when both run and answer, 1 otherwise
#   rocketmq.sh env              print the export lines for the tests
#   rocketmq.sh topic NAME [QUEUES]  create/update a topic (default 4 queues) on the cluster
#
# Environment (all optional):
#   MQSIDECAR_E2E_DIR                data root (default /tmp/mqsidecar-e2e); ours is <root>/rocketmq
#   MQSIDECAR_CACHE                  jar cache root (default ~/.cache/mqsidecar)
#   MQSIDECAR_ROCKETMQ_VERSION       default 5.3.3 (see VERSION below for why not 5.3.4)
#   MQSIDECAR_ROCKETMQ_NAMESRV_PORT  default 19876
#   MQSIDECAR_ROCKETMQ_BROKER_PORT   default 20911; the broker also binds PORT-2 (fast channel)
#                                    and PORT+1 (HA), so keep those free as well
#   MQSIDECAR_ROCKETMQ_FLUSH_DISK_TYPE ASYNC_FLUSH (default) or SYNC_FLUSH
#   MQSIDECAR_ROCKETMQ_START_TIMEOUT seconds to wait for each "boot success" (default 120)
#   MQSIDECAR_MAVEN_ARGS             extra arguments for mvn (e.g. -Dmaven.repo.local=...)
#
# Layout under <root>/rocketmq: home/ (ROCKETMQ_HOME and user.home, so the logs land in
# home/logs/rocketmqlogs), store/, conf/, namesrv.out, broker.out, *.pid.
set -euo pipefail

HARNESS_NAME=rocketmq
HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# 5.3.4 is the newest 5.3.x broker/namesrv on Maven Central, but its rocketmq-client,
# rocketmq-remoting and rocketmq-tools artifacts were never published there, so the broker
# cannot be resolved; 5.3.3 is the newest complete 5.3.x release.
VERSION=${MQSIDECAR_ROCKETMQ_VERSION:-5.3.3}
E2E_DIR=${MQSIDECAR_E2E_DIR:-/tmp/mqsidecar-e2e}
CACHE_ROOT=${MQSIDECAR_CACHE:-${HOME:-/root}/.cache/mqsidecar}
NAMESRV_PORT=${MQSIDECAR_ROCKETMQ_NAMESRV_PORT:-19876}
BROKER_PORT=${MQSIDECAR_ROCKETMQ_BROKER_PORT:-20911}
START_TIMEOUT=${MQSIDECAR_ROCKETMQ_START_TIMEOUT:-120}
# The broker's flushDiskType: ASYNC_FLUSH (RocketMQ's default) or SYNC_FLUSH (the doctor's
# safe shape, e2e/doctor_e2e_test.go).
FLUSH_DISK_TYPE=${MQSIDECAR_ROCKETMQ_FLUSH_DISK_TYPE:-ASYNC_FLUSH}
HOST=127.0.0.1

DATA=$E2E_DIR/rocketmq
LIB=$CACHE_ROOT/rocketmq-$VERSION/lib
RMQ_HOME=$DATA/home
NAMESRV_PID=$DATA/namesrv.pid
BROKER_PID=$DATA/broker.pid
NAMESRV_OUT=$DATA/namesrv.out
BROKER_OUT=$DATA/broker.out
BROKER_LOG=$RMQ_HOME/logs/rocketmqlogs/broker.log

# log, die, now_ms, elapsed_since, log_tail, port_open: shared with the other broker scripts.
# shellcheck source=lib.sh
source "$HARNESS_DIR/lib.sh"

# pid_of PIDFILE MARKER — print the pid when the process runs and its command line contains
# MARKER (a recycled pid from a stale pid file does not count).
pid_of() {
	local f=$1 marker=$2 pid
	[[ -f $f ]] || return 1
	pid=$(tr -dc '0-9' <"$f")
	[[ -n $pid ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	[[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
	echo "$pid"
}
NAMESRV_MARK=org.apache.rocketmq.namesrv.NamesrvStartup
BROKER_MARK=org.apache.rocketmq.broker.BrokerStartup

# install — resolve the jars once into the cache (Maven only when the cache is incomplete).
install() {
	if [[ -f $LIB/.complete ]]; then
		return 0
	fi
	command -v java >/dev/null || die "java not found (RocketMQ $VERSION needs a JDK/JRE 8+; apt-get install openjdk-17-jre-headless)"
	command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
	mkdir -p "$CACHE_ROOT"
	local lock=$CACHE_ROOT/rocketmq-$VERSION.lock
	exec 9>"$lock"
	flock 9
	if [[ -f $LIB/.complete ]]; then
		flock -u 9
		return 0
	fi
	local t0 tmp
	t0=$(now_ms)
	tmp=$CACHE_ROOT/rocketmq-$VERSION/lib.tmp.$$
	rm -rf "$tmp"
	log "resolving RocketMQ $VERSION jars from Maven Central (cold download)"
	# shellcheck disable=SC2086  # MQSIDECAR_MAVEN_ARGS is a list of arguments
	if ! mvn -q -B -f "$HARNESS_DIR/rocketmq/pom.xml" -Drocketmq.version="$VERSION" -Drmq.out="$tmp" \
		${MQSIDECAR_MAVEN_ARGS:-} dependency:copy-dependencies >"$CACHE_ROOT/rocketmq-$VERSION.mvn.log" 2>&1; then
		log_tail "$CACHE_ROOT/rocketmq-$VERSION.mvn.log" 40
		rm -rf "$tmp"
		die "maven could not resolve RocketMQ $VERSION"
	fi
	rm -rf "$LIB"
	mv "$tmp" "$LIB"
	touch "$LIB/.complete"
	log "jars cached in $LIB ($(find "$LIB" -name '*.jar' | wc -l) jars, $(du -sh "$LIB" | cut -f1)) in $(elapsed_since "$t0")"
	flock -u 9
}

# write_conf — the name server and broker configuration, regenerated on every start so port
# overrides take effect.
write_conf() {
	mkdir -p "$DATA/conf" "$RMQ_HOME/conf" "$DATA/store/commitlog"
	cat >"$DATA/conf/namesrv.conf" <<EOF
listenPort=$NAMESRV_PORT
kvConfigPath=$DATA/home/namesrv/kvConfig.json
EOF
	# Every setting here is chosen for a small, fast, disposable test broker:
	# - brokerIP1 on loopback, so clients never try a LAN address;
	# - autoCreateTopicEnable=false: tests create topics explicitly (like production);
	#   retry and %DLQ% topics are still created by the broker itself;
	# - 64 MiB commit log files and small consume-queue files instead of 1 GiB / 6 MB;
	# - short delay levels, because the retry topic redelivers after level 3 + reconsume times;
	# - timer wheel off (arbitrary-delay messages are not used; it preallocates big files);
	# - disk ratio high so a busy CI disk does not make the broker refuse writes.
	sed "s|@NAMESRV@|$HOST:$NAMESRV_PORT|; s|@PORT@|$BROKER_PORT|; s|@STORE@|$DATA/store|g; s|^flushDiskType=.*|flushDiskType=$FLUSH_DISK_TYPE|" \
		"$HARNESS_DIR/rocketmq/broker.conf" >"$DATA/conf/broker.conf"
}

java_opts() {
	# $1 = heap max; user.home and rocketmq.home.dir keep logs and default paths in $DATA.
	echo "-server -Xms${2:-$1} -Xmx$1 -XX:MaxDirectMemorySize=${3:-128m} -XX:+UseG1GC" \
		"-XX:+ExitOnOutOfMemoryError -XX:-UsePerfData -Djava.net.preferIPv4Stack=true" \
		"-Duser.home=$RMQ_HOME -Drocketmq.home.dir=$RMQ_HOME -Drocketmq.client.logUseSlf4j=false" \
		"--add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED" \
		"--add-opens=java.base/java.lang=ALL-UNNAMED --add-exports=java.base/sun.nio.ch=ALL-UNNAMED"
}

# wait_boot NAME PIDFILE MARKER OUT PATTERN — wait for PATTERN in OUT while the process lives.
wait_boot() {
	local name=$1 pidf=$2 mark=$3 out=$4 pat=$5
	local deadline=$(( $(date +%s) + START_TIMEOUT ))
	while true; do
		if grep -qF -- "$pat" "$out" 2>/dev/null; then
			return 0
		fi
		# Checked twice, a second apart: at load 33 a name server that went on to boot was
		# once reported exited here (its command line read while setsid/nohup exec'd java).
		if ! pid_of "$pidf" "$mark" >/dev/null && { sleep 1; ! pid_of "$pidf" "$mark" >/dev/null; }; then
			log "$name exited during start-up"
			log_tail "$out"
			log_tail "$RMQ_HOME/logs/rocketmqlogs/${name}.log" 40
			return 1
		fi
		if (( $(date +%s) >= deadline )); then
			log "timed out after ${START_TIMEOUT}s waiting for '$pat' from $name"
			log_tail "$out"
			log_tail "$RMQ_HOME/logs/rocketmqlogs/${name}.log" 40
			return 1
		fi
		sleep 0.5
	done
}

start_namesrv() {
	if pid_of "$NAMESRV_PID" "$NAMESRV_MARK" >/dev/null; then
		log "name server already running (pid $(cat "$NAMESRV_PID"))"
		return 0
	fi
	if port_open "$NAMESRV_PORT"; then
		die "port $NAMESRV_PORT is taken by another process (set MQSIDECAR_ROCKETMQ_NAMESRV_PORT)"
	fi
	local t0
	t0=$(now_ms)
	: >"$NAMESRV_OUT"
	# shellcheck disable=SC2046  # java_opts is a list of options
	ROCKETMQ_HOME=$RMQ_HOME setsid nohup java $(java_opts 256m 64m 64m) -cp "$LIB/*" \
		"$NAMESRV_MARK" -c "$DATA/conf/namesrv.conf" >"$NAMESRV_OUT" 2>&1 </dev/null &
	echo $! >"$NAMESRV_PID"
	wait_boot namesrv "$NAMESRV_PID" "$NAMESRV_MARK" "$NAMESRV_OUT" "The Name Server boot success" ||
		die "name server did not start"
	log "name server up on $HOST:$NAMESRV_PORT (pid $(cat "$NAMESRV_PID")) in $(elapsed_since "$t0")"
}

start_broker() {
	if pid_of "$BROKER_PID" "$BROKER_MARK" >/dev/null; then
		log "broker already running (pid $(cat "$BROKER_PID"))"
		return 0
	fi
	local p
	for p in "$BROKER_PORT" $((BROKER_PORT - 2)) $((BROKER_PORT + 1)); do
		if port_open "$p"; then
			die "port $p is taken by another process (the broker needs PORT, PORT-2 and PORT+1; set MQSIDECAR_ROCKETMQ_BROKER_PORT)"
		fi
	done
	local t0 log_lines
	t0=$(now_ms)
	log_lines=$(wc -l <"$BROKER_LOG" 2>/dev/null || echo 0)
	: >"$BROKER_OUT"
	# shellcheck disable=SC2046
	ROCKETMQ_HOME=$RMQ_HOME setsid nohup java $(java_opts 512m 256m 256m) -cp "$LIB/*" \
		"$BROKER_MARK" -c "$DATA/conf/broker.conf" >"$BROKER_OUT" 2>&1 </dev/null &
	echo $! >"$BROKER_PID"
	wait_boot broker "$BROKER_PID" "$BROKER_MARK" "$BROKER_OUT" "boot success" ||
		die "broker did not start"
	# Topics created right after start must land on a broker the name server knows: wait for
	# this start's registration line (the broker logs it before "boot success" in 5.3, but the
	# order is not a documented promise). Cheaper than running mqadmin clusterList (a JVM).
	local deadline=$(( $(date +%s) + 30 ))
	until tail -n "+$((log_lines + 1))" "$BROKER_LOG" 2>/dev/null |
		grep -q "Registering current broker to name server completed"; do
		(( $(date +%s) < deadline )) || { log_tail "$BROKER_LOG" 40; die "broker did not register with the name server"; }
		sleep 0.5
	done
	log "broker up on $HOST:$BROKER_PORT (pid $(cat "$BROKER_PID")) in $(elapsed_since "$t0")"
}

# stop_one NAME PIDFILE MARKER — SIGTERM (the broker flushes and unregisters), SIGKILL after 30 s.
stop_one() {
	local name=$1 pidf=$2 mark=$3 pid i
	if ! pid=$(pid_of "$pidf" "$mark"); then
		rm -f "$pidf"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 60; i++)); do
		pid_of "$pidf" "$mark" >/dev/null || { rm -f "$pidf"; log "$name stopped"; return 0; }
		sleep 0.5
	done
	log "$name (pid $pid) ignored SIGTERM for 30s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 20; i++)); do
		pid_of "$pidf" "$mark" >/dev/null || break
		sleep 0.5
	done
	rm -f "$pidf"
}

# admin ARGS... — run mqadmin (org.apache.rocketmq.tools.command.MQAdminStartup).
admin() {
	# shellcheck disable=SC2046
	ROCKETMQ_HOME=$RMQ_HOME java -Xms32m -Xmx128m -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
		-Duser.home="$RMQ_HOME" -Drocketmq.home.dir="$RMQ_HOME" -cp "$LIB/*" \
		org.apache.rocketmq.tools.command.MQAdminStartup "$@"
}

cmd_start() {
	local t0
	t0=$(now_ms)
	install
	mkdir -p "$DATA"
	write_conf
	start_namesrv
	start_broker
	log "RocketMQ $VERSION ready in $(elapsed_since "$t0"): namesrv $HOST:$NAMESRV_PORT, broker $HOST:$BROKER_PORT"
}

cmd_stop() {
	# Broker first: it unregisters from the name server on shutdown.
	stop_one broker "$BROKER_PID" "$BROKER_MARK"
	stop_one namesrv "$NAMESRV_PID" "$NAMESRV_MARK"
}

cmd_status() {
	local ok=0
	if pid_of "$NAMESRV_PID" "$NAMESRV_MARK" >/dev/null && port_open "$NAMESRV_PORT"; then
		log "name server running (pid $(cat "$NAMESRV_PID")) on $HOST:$NAMESRV_PORT"
	else
		log "name server not running"
		ok=1
	fi
	if pid_of "$BROKER_PID" "$BROKER_MARK" >/dev/null && port_open "$BROKER_PORT"; then
		log "broker running (pid $(cat "$BROKER_PID")) on $HOST:$BROKER_PORT"
	else
		log "broker not running"
		ok=1
	fi
	return $ok
}

cmd_env() {
	echo "export MQSIDECAR_E2E_ROCKETMQ=$HOST:$NAMESRV_PORT"
	echo "export MQSIDECAR_E2E_ROCKETMQ_BROKER=$HOST:$BROKER_PORT"
}

cmd_topic() {
	local name=${1:-} queues=${2:-4}
	[[ -n $name ]] || die "usage: rocketmq.sh topic NAME [QUEUES]"
	[[ $queues =~ ^[0-9]+$ ]] || die "QUEUES must be a number, got '$queues'"
	[[ -f $LIB/.complete ]] || die "RocketMQ is not installed; run rocketmq.sh start first"
	cmd_status 2>/dev/null || die "RocketMQ is not running; run rocketmq.sh start first"
	local t0 out
	t0=$(now_ms)
	if ! out=$(admin updateTopic -n "$HOST:$NAMESRV_PORT" -c DefaultCluster -t "$name" -r "$queues" -w "$queues" 2>&1); then
		printf '%s\n' "$out" >&2
		die "updateTopic $name failed"
	fi
	grep -q "success" <<<"$out" || { printf '%s\n' "$out" >&2; die "updateTopic $name did not report success"; }
	log "topic $name ($queues queues) created in $(elapsed_since "$t0")"
}

main() {
	local cmd=${1:-}
	shift || true
	case $cmd in
	start) cmd_start ;;
	stop) cmd_stop ;;
	restart) cmd_stop; cmd_start ;;
	restart-broker)
		stop_one broker "$BROKER_PID" "$BROKER_MARK"
		install
		write_conf
		start_broker
		;;
	reset)
		cmd_stop
		rm -rf "$DATA"
		cmd_start
		;;
	status) cmd_status ;;
	env) cmd_env ;;
	topic) cmd_topic "$@" ;;
	*)
		echo "usage: $0 {start|stop|restart|restart-broker|reset|status|env|topic NAME [QUEUES]}" >&2
		exit 2
		;;
	esac
}

main "$@"
