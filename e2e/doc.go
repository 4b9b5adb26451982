// Package e2e holds the end-to-end tests of mqsidecar. They drive the built binary the way
// an operator does: write a YAML config file, run `mqsidecar run --config F`, wait for
// /readyz, kill -9 it, restart it, send SIGTERM, and look at what the app received and what
// the broker has committed or acknowledged. The package has no code of its own; everything
// lives in its tests.
//
// Two families of tests:
//   - TestKfake*: no build tag, part of `go test ./...`. The broker is franz-go's kfake,
//     started inside the test process; the binary connects to it over TCP loopback.
//   - Test*E2E*: build tag e2e. Real Kafka, RabbitMQ and RocketMQ started by e2e/harness
//     (addresses in MQSIDECAR_E2E_KAFKA, MQSIDECAR_E2E_RABBITMQ and MQSIDECAR_E2E_ROCKETMQ
//     with MQSIDECAR_E2E_ROCKETMQ_BROKER; `e2e/harness/all.sh env` prints them). A test whose
//     broker is not set skips, except under CI=true, where it fails. They kill the sidecar,
//     restart or crash the broker and take the app down while thousands of messages flow.
//
// The binary is built once per test run (or taken from MQSIDECAR_BIN).
//
// What the checker counts (every test run prints these in a table); G1-G6 are the
// guarantees in docs/guarantees.md:
//   - delivered: unique message IDs the app answered 2xx at least once.
//   - lost: produced unique IDs minus delivered. Must be 0 (G1).
//   - duplicates: pushes of an ID after the app had already answered 2xx for it. "flagged"
//     ones carry ce-redelivered: true (allowed: the crash window of G2); "silent" ones do
//     not and must be 0. Stricter still, "unflagged repeats" counts every push of an ID the
//     app had seen before (whatever it answered) without ce-redelivered: true; also 0.
//   - order violations (where the configuration promises per-key order: Kafka with
//     ordering: partition or key, RocketMQ in orderly mode): for each key, take its unique
//     IDs in the order their first copy was produced; a violation is an ID whose first 2xx
//     arrived before the first 2xx of an ID of the same key produced earlier. Redeliveries
//     after a crash may repeat earlier IDs (they are duplicates, counted above), but the
//     first successful delivery of each ID must follow production order.
//   - concurrent: pushes of an ID that arrived while another push of the same ID was still
//     being answered. Must be 0 (G2).
//   - commit coverage (Kafka): at every sample, every offset below a partition's committed
//     offset holds a copy of an ID the app had answered 2xx. Nothing is committed that the
//     app did not finish (G1), including while the app is down.
package e2e
