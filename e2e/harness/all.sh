#!/usr/bin/env bash
# all.sh — run one verb on every broker script in this directory (every *.sh except lib.sh and
# all.sh, so a new <broker>.sh with the same verbs joins in without edits here).
#
# Usage: all.sh start|stop|restart|reset|status|env
#   start/stop/restart/reset run the brokers in parallel and fail if any of them failed.
#   status/env run them one after the other; env output is meant for eval:
#     eval "$(e2e/harness/all.sh env)"
# MQSIDECAR_E2E_BROKERS="kafka rabbitmq" limits the run to those brokers.

HARNESS_NAME=all
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	echo "usage: $0 start|stop|restart|reset|status|env" >&2
}

brokers() {
	local f name
	for f in "$HARNESS_DIR"/*.sh; do
		name=$(basename "$f" .sh)
		[[ $name == lib || $name == all ]] && continue
		if [[ -n ${MQSIDECAR_E2E_BROKERS:-} && " $MQSIDECAR_E2E_BROKERS " != *" $name "* ]]; then
			continue
		fi
		echo "$name"
	done
}

# parallel VERB — run VERB on every broker at once; report each failure; exit 1 if any failed.
parallel() {
	local verb=$1 name t0
	local -A pids=()
	t0=$(now_ms)
	for name in $(brokers); do
		bash "$HARNESS_DIR/$name.sh" "$verb" &
		pids[$name]=$!
	done
	local failed=()
	for name in "${!pids[@]}"; do
		wait "${pids[$name]}" || failed+=("$name")
	done
	if (( ${#failed[@]} > 0 )); then
		die "$verb failed for: ${failed[*]}"
	fi
	log "$verb: ok for $(brokers | xargs) ($(elapsed_since "$t0"))"
}

# serial VERB — run VERB on every broker in turn; exit 1 if any failed (status of a stopped
# broker counts as a failure, which is what a caller asking "is everything up?" wants).
serial() {
	local verb=$1 name rc=0
	for name in $(brokers); do
		bash "$HARNESS_DIR/$name.sh" "$verb" || rc=1
	done
	return $rc
}

cmd_start() { parallel start; }
cmd_stop() { parallel stop; }
cmd_restart() { parallel restart; }
cmd_reset() { parallel reset; }
cmd_status() { serial status; }
cmd_env() {
	serial env
	echo "export MQSIDECAR_E2E_HARNESS=$HARNESS_DIR"
}

run_verb "$@"
