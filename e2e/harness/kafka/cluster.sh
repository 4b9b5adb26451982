#!/usr/bin/env bash
# cluster.sh — a three-node Apache Kafka KRaft cluster on loopback (each node broker and
# controller in one JVM), replication factor 3 and min.insync.replicas 2 for new topics: the
# safe shape `mqsidecar doctor` is tested against (e2e/doctor_e2e_test.go). Each node is
# ../kafka.sh with its own directory, ports and node id, so the jars, config and lifecycle
# are the single broker's. all.sh does not start it (it is not ../<name>.sh).
#
# Usage: cluster.sh start|stop|status|env
# Environment: MQSIDECAR_E2E_KAFKA_CLUSTER_PORT (default 19192): node i listens on
# PORT+2(i-1) and its controller on PORT+2(i-1)+1; MQSIDECAR_E2E_KAFKA_CLUSTER_HEAP (default
# 256m) per node; MQSIDECAR_E2E_DIR as for every script (nodes in <dir>/kafka-cluster/).

HARNESS_NAME=kafka-cluster
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

BASE=${MQSIDECAR_E2E_KAFKA_CLUSTER_PORT:-19192}
HEAP=${MQSIDECAR_E2E_KAFKA_CLUSTER_HEAP:-256m}
C_DIR=$E2E_DIR/kafka-cluster
NODES=(1 2 3)

port_of() { echo $((BASE + 2 * ($1 - 1))); }

voters() {
	local i out=()
	for i in "${NODES[@]}"; do out+=("$i@$E2E_HOST:$(($(port_of "$i") + 1))"); done
	(IFS=,; echo "${out[*]}")
}

# node I VERB — ../kafka.sh VERB as node I.
node() {
	local i=$1 verb=$2 id
	id=$(cat "$C_DIR/cluster.id")
	MQSIDECAR_E2E_DIR=$C_DIR/node$i MQSIDECAR_E2E_KAFKA_PORT=$(port_of "$i") \
		MQSIDECAR_E2E_KAFKA_CONTROLLER_PORT=$(($(port_of "$i") + 1)) MQSIDECAR_E2E_KAFKA_HEAP=$HEAP \
		MQSIDECAR_E2E_KAFKA_NODE_ID=$i MQSIDECAR_E2E_KAFKA_VOTERS=$(voters) \
		MQSIDECAR_E2E_KAFKA_CLUSTER_ID=$id MQSIDECAR_E2E_KAFKA_RF=${#NODES[@]} \
		bash "$HARNESS_DIR/kafka.sh" "$verb"
}

# cluster_id — make sure every node is formatted with one cluster id (before they start).
cluster_id() {
	mkdir -p "$C_DIR"
	[[ -s $C_DIR/cluster.id ]] || head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' >"$C_DIR/cluster.id"
}

# each VERB — VERB on every node at once (a node is ready only once a quorum of
# controllers runs, so the nodes must start together); exit 1 if any failed.
each() {
	local verb=$1 i t0 rc=0
	local -a pids=()
	t0=$(now_ms)
	cluster_id
	for i in "${NODES[@]}"; do
		node "$i" "$verb" &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i" || rc=1; done
	(( rc == 0 )) || die "$verb failed on a node"
	log "$verb: ok on ${#NODES[@]} nodes ($(elapsed_since "$t0"))"
}

bootstrap() {
	local i out=()
	for i in "${NODES[@]}"; do out+=("$E2E_HOST:$(port_of "$i")"); done
	(IFS=,; echo "${out[*]}")
}

case ${1:-} in
start | stop) each "$1" ;;
status)
	rc=0
	cluster_id
	for i in "${NODES[@]}"; do node "$i" status || rc=1; done
	exit $rc
	;;
env) echo "export MQSIDECAR_E2E_KAFKA_CLUSTER=$(bootstrap)" ;;
*)
	echo "usage: $0 start|stop|status|env" >&2
	exit 2
	;;
esac
