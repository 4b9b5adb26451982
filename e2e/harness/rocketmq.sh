#!/usr/bin/env bash
# rocketmq.sh — a RocketMQ 5.3.x name server + broker for the e2e tests, on loopback, from the
# Maven Central jars (no Docker, no distribution zip).
#
# Usage: rocketmq.sh start|stop|restart [--hard]|kill|reset|status|env|logs [N]|topic NAME [QUEUES]|restart-broker
# The lifecycle verbs are lib.sh's (the contract the other broker scripts share); see
# README.md in this directory for the environment variables and the file layout.
#
# Layout under <root>/rocketmq: home/ (ROCKETMQ_HOME and user.home, so the logs land in
# home/logs/rocketmqlogs), store/, conf/, namesrv.out, broker.out, *.pid.

HARNESS_NAME=rocketmq
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The variables are MQSIDECAR_E2E_ROCKETMQ_*, like the other brokers'; the older names
# without E2E_ (MQSIDECAR_ROCKETMQ_*) still work, since CI scripts set them.
#
# 5.3.4 is the newest 5.3.x broker/namesrv on Maven Central, but its rocketmq-client,
# rocketmq-remoting and rocketmq-tools artifacts were never published there, so the broker
# cannot be resolved; 5.3.3 is the newest complete 5.3.x release.
VERSION=${MQSIDECAR_E2E_ROCKETMQ_VERSION:-${MQSIDECAR_ROCKETMQ_VERSION:-5.3.3}}
NAMESRV_PORT=${MQSIDECAR_E2E_ROCKETMQ_NAMESRV_PORT:-${MQSIDECAR_ROCKETMQ_NAMESRV_PORT:-19876}}
BROKER_PORT=${MQSIDECAR_E2E_ROCKETMQ_BROKER_PORT:-${MQSIDECAR_ROCKETMQ_BROKER_PORT:-20911}}
START_TIMEOUT=${MQSIDECAR_E2E_START_TIMEOUT:-${MQSIDECAR_ROCKETMQ_START_TIMEOUT:-120}}
STOP_TIMEOUT=${MQSIDECAR_E2E_STOP_TIMEOUT:-30}
# The broker's flushDiskType: ASYNC_FLUSH (RocketMQ's default) or SYNC_FLUSH (the doctor's
# safe shape, e2e/doctor_e2e_test.go).
FLUSH_DISK_TYPE=${MQSIDECAR_E2E_ROCKETMQ_FLUSH_DISK_TYPE:-${MQSIDECAR_ROCKETMQ_FLUSH_DISK_TYPE:-ASYNC_FLUSH}}
HOST=$E2E_HOST

DATA=$E2E_DIR/rocketmq
LIB=$CACHE_DIR/rocketmq-$VERSION/lib
RMQ_HOME=$DATA/home
NAMESRV_PID=$DATA/namesrv.pid
BROKER_PID=$DATA/broker.pid
NAMESRV_OUT=$DATA/namesrv.out
BROKER_OUT=$DATA/broker.out
BROKER_LOG=$RMQ_HOME/logs/rocketmqlogs/broker.log
NAMESRV_MARK=org.apache.rocketmq.namesrv.NamesrvStartup
BROKER_MARK=org.apache.rocketmq.broker.BrokerStartup

usage() {
	cat <<EOF
usage: $0 start|stop|restart [--hard]|kill|reset|status|env|logs [N]|topic NAME [QUEUES]|restart-broker
  start           resolve the jars if missing, start the name server and the broker, wait for both
  stop            SIGTERM (the broker first: it unregisters), SIGKILL after ${STOP_TIMEOUT}s
  restart         stop + start keeping the store; --hard kills both with SIGKILL first (a crash)
  kill            SIGKILL both and leave them down (bring them back with start)
  reset           stop + wipe the store and logs + start
  status          exit 0 when both run and answer on $HOST:$NAMESRV_PORT and $HOST:$BROKER_PORT
  env             print export lines for the e2e tests
  logs [N]        print the tail of the name server's and the broker's logs
  topic NAME [Q]  create or update a topic (default 4 queues) with mqadmin
  restart-broker  stop + start the broker only (the name server keeps running)
EOF
}

# pid_of PIDFILE MARKER — print the pid when the process runs and its command line contains
# MARKER (a recycled pid from a stale pid file does not count).
pid_of() {
	pidfile_alive "$1" "$2" || return 1
	tr -dc '0-9' <"$1"
}

# install — resolve the jars once into the cache (Maven only when the cache is incomplete).
install() {
	if [[ -f $LIB/.complete ]]; then
		return 0
	fi
	need_cmd java openjdk-17-jre-headless
	need_cmd mvn maven
	mkdir -p "$CACHE_DIR"
	local lock=$CACHE_DIR/rocketmq-$VERSION.lock
	# fd 8: fd 9 holds the broker's lifecycle lock (with_lock in lib.sh).
	exec 8>"$lock"
	flock 8
	if [[ -f $LIB/.complete ]]; then
		flock -u 8
		return 0
	fi
	local t0 tmp
	t0=$(now_ms)
	tmp=$CACHE_DIR/rocketmq-$VERSION/lib.tmp.$$
	rm -rf "$tmp"
	log "resolving RocketMQ $VERSION jars from Maven Central (cold download)"
	# shellcheck disable=SC2086  # MQSIDECAR_MAVEN_ARGS is a list of arguments
	if ! mvn -q -B -f "$HARNESS_DIR/rocketmq/pom.xml" -Drocketmq.version="$VERSION" -Drmq.out="$tmp" \
		${MQSIDECAR_MAVEN_ARGS:-} dependency:copy-dependencies >"$CACHE_DIR/rocketmq-$VERSION.mvn.log" 2>&1; then
		log_tail "$CACHE_DIR/rocketmq-$VERSION.mvn.log" 40
		rm -rf "$tmp"
		die "maven could not resolve RocketMQ $VERSION"
	fi
	rm -rf "$LIB"
	mv "$tmp" "$LIB"
	touch "$LIB/.complete"
	log "jars cached in $LIB ($(find "$LIB" -name '*.jar' | wc -l) jars, $(du -sh "$LIB" | cut -f1)) in $(elapsed_since "$t0")"
	flock -u 8
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
		die "port $NAMESRV_PORT is taken by another process (set MQSIDECAR_E2E_ROCKETMQ_NAMESRV_PORT)"
	fi
	local t0
	t0=$(now_ms)
	: >"$NAMESRV_OUT"
	# shellcheck disable=SC2046  # java_opts is a list of options
	ROCKETMQ_HOME=$RMQ_HOME spawn_bg "$NAMESRV_PID" "$NAMESRV_OUT" java $(java_opts 256m 64m 64m) -cp "$LIB/*" \
		"$NAMESRV_MARK" -c "$DATA/conf/namesrv.conf"
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
			die "port $p is taken by another process (the broker needs PORT, PORT-2 and PORT+1; set MQSIDECAR_E2E_ROCKETMQ_BROKER_PORT)"
		fi
	done
	local t0 log_lines
	t0=$(now_ms)
	log_lines=$(wc -l <"$BROKER_LOG" 2>/dev/null || echo 0)
	: >"$BROKER_OUT"
	# shellcheck disable=SC2046
	ROCKETMQ_HOME=$RMQ_HOME spawn_bg "$BROKER_PID" "$BROKER_OUT" java $(java_opts 512m 256m 256m) -cp "$LIB/*" \
		"$BROKER_MARK" -c "$DATA/conf/broker.conf"
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

# stop_one NAME PIDFILE MARKER — SIGTERM (the broker flushes and unregisters), SIGKILL after
# STOP_TIMEOUT; returns once the process is gone.
stop_one() {
	local name=$1 pidf=$2 mark=$3 pid
	if pid=$(pid_of "$pidf" "$mark"); then
		stop_pid "$pid" "$STOP_TIMEOUT" "$mark" || die "could not stop $name (pid $pid)"
		log "$name stopped"
	fi
	rm -f "$pidf"
}

# kill_one NAME PIDFILE MARKER — SIGKILL (a crash) and wait until the process is gone.
kill_one() {
	local name=$1 pidf=$2 mark=$3 pid
	if pid=$(pid_of "$pidf" "$mark"); then
		kill_pid_hard "$pid" "$mark" || die "could not kill $name (pid $pid)"
		log "$name killed with SIGKILL (pid $pid)"
	fi
	rm -f "$pidf"
}

# admin ARGS... — run mqadmin (org.apache.rocketmq.tools.command.MQAdminStartup).
admin() {
	# shellcheck disable=SC2046
	ROCKETMQ_HOME=$RMQ_HOME java -Xms32m -Xmx128m -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
		-Duser.home="$RMQ_HOME" -Drocketmq.home.dir="$RMQ_HOME" -cp "$LIB/*" \
		org.apache.rocketmq.tools.command.MQAdminStartup "$@"
}

do_start() {
	local t0
	t0=$(now_ms)
	install
	mkdir -p "$DATA"
	write_conf
	start_namesrv
	start_broker
	log "RocketMQ $VERSION ready in $(elapsed_since "$t0"): namesrv $HOST:$NAMESRV_PORT, broker $HOST:$BROKER_PORT"
}

do_stop() {
	# Broker first: it unregisters from the name server on shutdown.
	stop_one broker "$BROKER_PID" "$BROKER_MARK"
	stop_one namesrv "$NAMESRV_PID" "$NAMESRV_MARK"
	wait_ports_closed "$BROKER_PORT" "$NAMESRV_PORT" || die "ports still in use after the stop"
}

do_kill() {
	kill_one broker "$BROKER_PID" "$BROKER_MARK"
	kill_one namesrv "$NAMESRV_PID" "$NAMESRV_MARK"
	wait_ports_closed "$BROKER_PORT" "$NAMESRV_PORT" || die "ports still in use after the kill"
}

lifecycle_verbs rocketmq "$DATA"

cmd_restart-broker() {
	with_lock rocketmq
	stop_one broker "$BROKER_PID" "$BROKER_MARK"
	install
	write_conf
	start_broker
}

cmd_logs() {
	log_tail "$NAMESRV_OUT" 20
	log_tail "$BROKER_OUT" 20
	log_tail "$BROKER_LOG" "${1:-80}"
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

run_verb "$@"
