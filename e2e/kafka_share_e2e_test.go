//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// kafkaShareFleet is a fleet in one share group (source.kafka.mode: share, KIP-932): every
// replica may get records of every partition, so the fleet may be larger than the
// partition count. A share group commits no offsets; what it has settled shows as the
// share-partition start offset (SPSO): every record below it was accepted (or rejected),
// records above it may be.
type kafkaShareFleet struct{ *kafkaEnv }

func (k kafkaShareFleet) sidecarYAML(appURL, dedupPath string) (string, []string) {
	return kafkaConfig{brokers: k.brokers, topic: k.topic, group: k.group, appURL: appURL, dedupPath: dedupPath, mode: "share", ordering: "none"}.yaml(), nil
}

func (kafkaShareFleet) orderPromised() bool { return false }

// startOffsets returns the share group's SPSO and lag per partition (the broker's count of
// records neither accepted nor rejected; the SPSO it persists may lag behind, the lag
// does not). A partition the group never started is absent.
func (k kafkaShareFleet) startOffsets() (spso, lag map[int32]int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	described, err := k.adm.DescribeShareGroupOffsets(ctx, k.group)
	if err == nil {
		err = described.Error()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("describe share group offsets of %s: %w", k.group, err)
	}
	spso, lag = map[int32]int64{}, map[int32]int64{}
	for _, o := range described[k.group].Offsets[k.topic] {
		if o.Err == nil && o.StartOffset >= 0 {
			spso[o.Partition], lag[o.Partition] = o.StartOffset, o.Lag
		}
	}
	return spso, lag, nil
}

// checkSettled: every partition of the topic has share-partition lag 0 (every record was
// accepted or rejected; none is available or acquired).
func (k kafkaShareFleet) checkSettled() error {
	_, lag, err := k.startOffsets()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := k.adm.ListEndOffsets(ctx, k.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("list end offsets: %w", err)
	}
	var bad []string
	for p := range ends[k.topic] {
		if l, ok := lag[p]; !ok || l != 0 {
			bad = append(bad, fmt.Sprintf("p%d lag %d (known %v)", p, l, ok))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("share group not settled: %s", strings.Join(bad, ", "))
	}
	return nil
}

func (k kafkaShareFleet) waitSettled(timeout time.Duration, extra ...func() string) {
	k.t.Helper()
	waitFor(k.t, timeout, "share group settled (lag 0 on every partition)", func() (bool, string) {
		err := k.checkSettled()
		return err == nil, fmt.Sprint(err)
	}, extra...)
}

// ackViolations: every offset below a partition's SPSO holds a copy of an ID the app
// answered 2xx (this fleet has no dead-letter target and never drops).
func (k kafkaShareFleet) ackViolations(ok func() map[string]bool) ([]string, error) {
	spso, _, err := k.startOffsets()
	if err != nil {
		return nil, err
	}
	return k.coverage(spso, ok()), nil
}

// TestKafkaE2EShareChaos: one topic with 2 partitions and 4 sidecars in one share group
// (twice as many as a consumer group could use), kill -9 spread over them, 10% producer
// duplicates, 7.5% of first attempts failed, the shared Redis store: nothing lost, no silent
// duplicate, no concurrent push of one ID, nothing accepted before its 2xx, everything
// accepted at the end, and a fresh member of the group receives nothing completed.
func TestKafkaE2EShareChaos(t *testing.T) {
	k := newKafkaE2E(t, "share-chaos", 2)
	runFleet(t, kafkaShareFleet{k}, fleetScenario{
		label: "share kill-9 x3, redis", replicas: 4, messages: 2000, keys: 64, dupShare: 0.1, failPerK: 75, kills: 3,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}
