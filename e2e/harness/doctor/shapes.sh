#!/usr/bin/env bash
# shapes.sh — the safe broker shapes `mqsidecar doctor` is tested against
# (e2e/doctor_e2e_test.go), next to the default (at-risk) brokers of ../all.sh:
#   - Kafka: a three-node KRaft cluster, replication factor 3, min.insync.replicas 2
#     (../kafka/cluster.sh, ports MQSIDECAR_E2E_KAFKA_CLUSTER_PORT.. +5, default 19192);
#   - RocketMQ: a second name server + broker with flushDiskType=SYNC_FLUSH
#     (../rocketmq.sh in <dir>/rocketmq-sync, name server MQSIDECAR_E2E_ROCKETMQ_SYNC_NAMESRV_PORT
#     default 19976, broker MQSIDECAR_E2E_ROCKETMQ_SYNC_BROKER_PORT default 21011, which also
#     binds PORT-2 and PORT+1).
# RabbitMQ's safe shape is a quorum queue on the default broker; the test reads it through
# the management API (start ../rabbitmq.sh with MQSIDECAR_E2E_RABBITMQ_PLUGINS=rabbitmq_management).
# Ports stay below 32768, outside Linux's ephemeral range, so that no outgoing connection
# holds one when a broker binds it.
#
# Usage: shapes.sh start|stop|env. all.sh does not run it (it is not ../<name>.sh).

HARNESS_NAME=doctor-shapes
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NS_PORT=${MQSIDECAR_E2E_ROCKETMQ_SYNC_NAMESRV_PORT:-19976}
BROKER_PORT=${MQSIDECAR_E2E_ROCKETMQ_SYNC_BROKER_PORT:-21011}

rocketmq_sync() {
	MQSIDECAR_E2E_DIR=$E2E_DIR/rocketmq-sync MQSIDECAR_ROCKETMQ_FLUSH_DISK_TYPE=SYNC_FLUSH \
		MQSIDECAR_ROCKETMQ_NAMESRV_PORT=$NS_PORT MQSIDECAR_ROCKETMQ_BROKER_PORT=$BROKER_PORT \
		bash "$HARNESS_DIR/rocketmq.sh" "$@"
}

both() {
	local verb=$1 t0 a b rc=0
	t0=$(now_ms)
	bash "$HARNESS_DIR/kafka/cluster.sh" "$verb" &
	a=$!
	rocketmq_sync "$verb" &
	b=$!
	wait "$a" || rc=1
	wait "$b" || rc=1
	(( rc == 0 )) || die "$verb failed"
	log "$verb: ok ($(elapsed_since "$t0"))"
}

case ${1:-} in
start | stop) both "$1" ;;
env)
	bash "$HARNESS_DIR/kafka/cluster.sh" env
	echo "export MQSIDECAR_E2E_ROCKETMQ_SYNC=$E2E_HOST:$NS_PORT"
	echo "export MQSIDECAR_E2E_ROCKETMQ_SYNC_BROKER=$E2E_HOST:$BROKER_PORT"
	;;
*)
	echo "usage: $0 start|stop|env" >&2
	exit 2
	;;
esac
