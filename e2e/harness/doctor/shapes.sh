#!/usr/bin/env bash
# shapes.sh — the broker shapes `mqsidecar doctor` is tested against (e2e/doctor_e2e_test.go)
# besides the default (at-risk) brokers of ../all.sh:
#   - Kafka: a three-node KRaft cluster, replication factor 3, min.insync.replicas 2
#     (../kafka/cluster.sh, ports MQSIDECAR_E2E_KAFKA_CLUSTER_PORT.. +5, default 19192);
#   - RocketMQ: a second name server + broker with flushDiskType=SYNC_FLUSH
#     (../rocketmq.sh in <dir>/rocketmq-sync, name server MQSIDECAR_E2E_ROCKETMQ_SYNC_NAMESRV_PORT
#     default 19976, broker MQSIDECAR_E2E_ROCKETMQ_SYNC_BROKER_PORT default 21011, which also
#     binds PORT-2 and PORT+1).
#   - RabbitMQ with the management API (its safe shape is a quorum queue, which only the
#     management API shows): a second node of ../rabbitmq.sh in <dir>/rabbitmq-mgmt, named
#     MQSIDECAR_E2E_DOCTOR_RABBITMQ_NODENAME (mqsidecar-e2e-mgmt@localhost), AMQP on
#     MQSIDECAR_E2E_DOCTOR_RABBITMQ_PORT (5674), distribution MQSIDECAR_E2E_DOCTOR_RABBITMQ_DIST_PORT
#     (25674), management API MQSIDECAR_E2E_DOCTOR_RABBITMQ_MGMT_PORT (15674). A node of its
#     own: the chaos tests that restart the default broker keep it as it was, without the
#     plugin (whose node stops more slowly).
# Ports stay below 32768, outside Linux's ephemeral range, so that no outgoing connection
# holds one when a broker binds it.
#
# Usage: shapes.sh start|stop|env. all.sh does not run it (it is not ../<name>.sh).

HARNESS_NAME=doctor-shapes
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

R_AMQP=${MQSIDECAR_E2E_DOCTOR_RABBITMQ_PORT:-5674}
R_DIST=${MQSIDECAR_E2E_DOCTOR_RABBITMQ_DIST_PORT:-25674}
R_MGMT=${MQSIDECAR_E2E_DOCTOR_RABBITMQ_MGMT_PORT:-15674}
R_NODE=${MQSIDECAR_E2E_DOCTOR_RABBITMQ_NODENAME:-mqsidecar-e2e-mgmt@localhost}
NS_PORT=${MQSIDECAR_E2E_ROCKETMQ_SYNC_NAMESRV_PORT:-19976}
BROKER_PORT=${MQSIDECAR_E2E_ROCKETMQ_SYNC_BROKER_PORT:-21011}

rocketmq_sync() {
	MQSIDECAR_E2E_DIR=$E2E_DIR/rocketmq-sync MQSIDECAR_E2E_ROCKETMQ_FLUSH_DISK_TYPE=SYNC_FLUSH \
		MQSIDECAR_E2E_ROCKETMQ_NAMESRV_PORT=$NS_PORT MQSIDECAR_E2E_ROCKETMQ_BROKER_PORT=$BROKER_PORT \
		bash "$HARNESS_DIR/rocketmq.sh" "$@"
}

rabbitmq_mgmt() {
	MQSIDECAR_E2E_DIR=$E2E_DIR/rabbitmq-mgmt MQSIDECAR_E2E_RABBITMQ_PLUGINS=rabbitmq_management \
		MQSIDECAR_E2E_RABBITMQ_PORT=$R_AMQP MQSIDECAR_E2E_RABBITMQ_DIST_PORT=$R_DIST \
		MQSIDECAR_E2E_RABBITMQ_MGMT_PORT=$R_MGMT MQSIDECAR_E2E_RABBITMQ_NODENAME=$R_NODE \
		bash "$HARNESS_DIR/rabbitmq.sh" "$@"
}

all() {
	local verb=$1 t0 pid rc=0
	local -a pids=()
	t0=$(now_ms)
	bash "$HARNESS_DIR/kafka/cluster.sh" "$verb" &
	pids+=($!)
	rocketmq_sync "$verb" &
	pids+=($!)
	rabbitmq_mgmt "$verb" &
	pids+=($!)
	for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
	(( rc == 0 )) || die "$verb failed"
	log "$verb: ok ($(elapsed_since "$t0"))"
}

case ${1:-} in
start | stop) all "$1" ;;
env)
	bash "$HARNESS_DIR/kafka/cluster.sh" env
	echo "export MQSIDECAR_E2E_ROCKETMQ_SYNC=$E2E_HOST:$NS_PORT"
	echo "export MQSIDECAR_E2E_ROCKETMQ_SYNC_BROKER=$E2E_HOST:$BROKER_PORT"
	echo "export MQSIDECAR_E2E_RABBITMQ_MGMT_AMQP=amqp://guest:guest@$E2E_HOST:$R_AMQP/"
	echo "export MQSIDECAR_E2E_RABBITMQ_MGMT=http://$E2E_HOST:$R_MGMT"
	;;
*)
	echo "usage: $0 start|stop|env" >&2
	exit 2
	;;
esac
