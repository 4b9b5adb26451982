package e2e

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaEnv is a broker (kfake or real) seen from the test: a producer, an admin client and
// what was produced where.
type kafkaEnv struct {
	t       testing.TB
	label   string // "kfake" or "kafka", for the tables
	brokers []string
	topic   string
	group   string
	cl      *kgo.Client
	adm     *kadm.Client

	mu       sync.Mutex
	produced []message
	at       map[int32]map[int64]string // partition → offset → ID of the copy stored there
}

// newKafkaEnv connects to brokers. The producer places keyed records by key hash and
// honours message.Partition when it is >= 0.
func newKafkaEnv(t testing.TB, label string, brokers []string, topic, group string) *kafkaEnv {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
			keyed := kgo.StickyKeyPartitioner(nil).ForTopic(topic)
			return func(r *kgo.Record, n int) int {
				if r.Partition >= 0 && len(r.Key) == 0 {
					return int(r.Partition)
				}
				return keyed.Partition(r, n)
			}
		})),
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.RetryTimeout(2*time.Minute),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &kafkaEnv{t: t, label: label, brokers: brokers, topic: topic, group: group, cl: cl, adm: kadm.NewClient(cl), at: map[int32]map[int64]string{}}
}

// createTopic creates the topic with the given partitions (replication factor 1).
func (k *kafkaEnv) createTopic(partitions int32) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := k.adm.CreateTopics(ctx, partitions, 1, nil, k.topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		k.t.Fatalf("create topic %s: %v", k.topic, err)
	}
}

// produce sends msgs in order and waits for the broker's acknowledgement of every record;
// records of one partition keep their order (idempotent producer). The ID goes into the
// message-id header.
func (k *kafkaEnv) produce(ctx context.Context, msgs []message) error {
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		r := &kgo.Record{
			Value:     fmt.Appendf(nil, `{"id":%q,"n":%d}`, m.ID, i),
			Headers:   []kgo.RecordHeader{{Key: "message-id", Value: []byte(m.ID)}, {Key: "content-type", Value: []byte("application/json")}},
			Partition: m.Partition,
		}
		if m.Key != "" {
			r.Key = []byte(m.Key)
		}
		recs[i] = r
	}
	res := k.cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		return fmt.Errorf("produce to %s: %w", k.topic, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.produced = append(k.produced, msgs...)
	for _, pr := range res {
		if k.at[pr.Record.Partition] == nil {
			k.at[pr.Record.Partition] = map[int64]string{}
		}
		k.at[pr.Record.Partition][pr.Record.Offset] = string(pr.Record.Headers[0].Value)
	}
	return nil
}

// mustProduce is produce that fails the test.
func (k *kafkaEnv) mustProduce(msgs ...message) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := k.produce(ctx, msgs); err != nil {
		k.t.Fatal(err)
	}
}

// producedSoFar returns a copy of what was produced.
func (k *kafkaEnv) producedSoFar() []message {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]message(nil), k.produced...)
}

// offsets returns the group's committed offsets and the topic's high watermarks by
// partition (a partition without a commit is absent from committed).
func (k *kafkaEnv) offsets() (committed, hwm map[int32]int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := k.adm.ListEndOffsets(ctx, k.topic)
	if err != nil {
		return nil, nil, fmt.Errorf("list end offsets: %w", err)
	}
	if err := ends.Error(); err != nil {
		return nil, nil, fmt.Errorf("list end offsets: %w", err)
	}
	committed, hwm = map[int32]int64{}, map[int32]int64{}
	fetched, err := k.adm.FetchOffsets(ctx, k.group)
	if err == nil {
		err = fetched.Error()
	}
	switch {
	case errors.Is(err, kerr.GroupIDNotFound):
		// No commit yet (kfake answers so for a group that never committed).
	case err != nil:
		return nil, nil, fmt.Errorf("fetch offsets of group %s: %w", k.group, err)
	}
	ends.Each(func(o kadm.ListedOffset) { hwm[o.Partition] = o.Offset })
	fetched.Each(func(o kadm.OffsetResponse) {
		if o.Topic == k.topic && o.At >= 0 {
			committed[o.Partition] = o.At
		}
	})
	return committed, hwm, nil
}

// lag returns HWM minus committed summed over partitions, and a per-partition description.
func (k *kafkaEnv) lag() (int64, string, error) {
	committed, hwm, err := k.offsets()
	if err != nil {
		return -1, "", err
	}
	var total int64
	var parts []string
	ps := make([]int32, 0, len(hwm))
	for p := range hwm {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	for _, p := range ps {
		c, ok := committed[p]
		if !ok {
			c = 0
		}
		total += hwm[p] - c
		if hwm[p] != c {
			parts = append(parts, fmt.Sprintf("p%d committed %d hwm %d", p, c, hwm[p]))
		}
	}
	return total, strings.Join(parts, ", "), nil
}

// waitLagZero waits until the group committed everything.
func (k *kafkaEnv) waitLagZero(timeout time.Duration, extra ...func() string) {
	k.t.Helper()
	waitFor(k.t, timeout, "group lag 0 (committed == high watermark on every partition)", lagZero(k.lag), extra...)
}

// coverage checks G1 on Kafka: every offset below a committed offset holds a copy of an ID
// in ok (answered 2xx by the app). Offsets this test has not recorded yet are skipped: the
// sidecar may commit a record before ProduceSync returned its offset to the test. It
// returns a description of the first gaps.
func (k *kafkaEnv) coverage(committed map[int32]int64, ok map[string]bool) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var bad []string
	for p, c := range committed {
		for off := int64(0); off < c; off++ {
			if id, known := k.at[p][off]; known && !ok[id] {
				bad = append(bad, fmt.Sprintf("p%d offset %d (%s) committed but never answered 2xx", p, off, id))
				if len(bad) >= 5 {
					return bad
				}
			}
		}
	}
	return bad
}

// groupMembers describes the group: its state and member IDs.
func (k *kafkaEnv) groupMembers() (state string, members []string, assigned int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gs, err := k.adm.DescribeGroups(ctx, k.group)
	if err != nil {
		return "", nil, 0, err
	}
	g, ok := gs[k.group]
	if !ok {
		return "", nil, 0, fmt.Errorf("group %s not described", k.group)
	}
	if g.Err != nil {
		return "", nil, 0, g.Err
	}
	for _, m := range g.Members {
		members = append(members, m.MemberID)
		if c, ok := m.Assigned.AsConsumer(); ok {
			for _, t := range c.Topics {
				assigned += len(t.Partitions)
			}
		}
	}
	return g.State, members, assigned, nil
}

// kafkaConfig is the sidecar config used by the Kafka tests.
type kafkaConfig struct {
	brokers        []string
	topic, group   string
	instanceID     string // "" = dynamic membership
	appURL         string
	dedupPath      string
	commitInterval string
	ordering       string
	mode           string // source.kafka.mode; "" = group
	deliveryExtra  string // appended inside the delivery section (indented lines)
	extra          string // appended verbatim (top-level YAML)
}

func (c kafkaConfig) yaml() string {
	if c.ordering == "" {
		c.ordering = "partition"
	}
	return c.withDelivery(fmt.Sprintf("  ordering: %s\n%s\n%s", c.ordering, e2eDelivery, c.deliveryExtra))
}

// withDelivery is the config with delivery as its delivery section (the lines under
// "delivery:"), instead of the one ordering and deliveryExtra describe.
func (c kafkaConfig) withDelivery(delivery string) string {
	if c.commitInterval == "" {
		c.commitInterval = "100ms"
	}
	mode := ""
	if c.mode != "" {
		mode = "    mode: " + c.mode + "\n"
	}
	section := mode + fmt.Sprintf(`    brokers: [%s]
    group: %s
    topics: [%s]
    message_id: "header:message-id"
    group_instance_id: %q
    commit_interval: %s`, strings.Join(c.brokers, ", "), c.group, c.topic, c.instanceID, c.commitInterval)
	return sidecarYAML("kafka", section, c.appURL, delivery, c.dedupPath, c.extra)
}

// The kafkaEnv side of brokerUnderTest (scenario_test.go).

func (k *kafkaEnv) name() string { return k.label }

func (k *kafkaEnv) sidecarYAML(appURL, dedupPath string) (string, []string) {
	return kafkaConfig{
		brokers: k.brokers, topic: k.topic, group: k.group, instanceID: k.group + "-0",
		appURL: appURL, dedupPath: dedupPath,
	}.yaml(), nil
}

func (k *kafkaEnv) orderPromised() bool { return true }

func (k *kafkaEnv) waitSettled(timeout time.Duration, extra ...func() string) {
	k.t.Helper()
	k.waitLagZero(timeout, extra...)
}

func (k *kafkaEnv) checkSettled() error {
	lag, desc, err := k.lag()
	if err != nil {
		return err
	}
	if lag != 0 {
		return fmt.Errorf("group lag %d: %s", lag, desc)
	}
	return nil
}

// ackViolations checks commit coverage: every offset below a committed offset holds a
// copy of an ID in ok(). Offsets not known yet (produced a moment ago) are skipped.
func (k *kafkaEnv) ackViolations(ok func() map[string]bool) ([]string, error) {
	committed, _, err := k.offsets()
	if err != nil {
		return nil, err
	}
	return k.coverage(committed, ok()), nil
}

func (k *kafkaEnv) sampleEvery() time.Duration { return 250 * time.Millisecond }

func (k *kafkaEnv) describe() string { return fmt.Sprintf("topic %s", k.topic) }
