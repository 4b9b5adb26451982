package kafka

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// byKey indexes checks by check name and target.
func byKey(checks []adapters.DurabilityCheck) map[[2]string]adapters.DurabilityCheck {
	m := map[[2]string]adapters.DurabilityCheck{}
	for _, c := range checks {
		m[[2]string{c.Check, c.Target}] = c
	}
	return m
}

func wantCheck(t *testing.T, m map[[2]string]adapters.DurabilityCheck, check, target, value string, v adapters.Verdict) {
	t.Helper()
	c, ok := m[[2]string{check, target}]
	switch {
	case !ok:
		t.Errorf("no %s check of %s", check, target)
	case c.Value != value || c.Verdict != v:
		t.Errorf("%s %s = %q %s, want %q %s (%+v)", check, target, c.Value, c.Verdict, value, v, c)
	case c.Verdict != adapters.VerdictOK && c.Fix == "":
		t.Errorf("%s %s is %s without a fix", check, target, c.Verdict)
	}
}

func TestCheckDurabilityKfake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	two, one := "2", "1"
	for _, tc := range []struct {
		topic string
		rf    int16
		cfg   map[string]*string
	}{
		{"safe", 3, map[string]*string{"min.insync.replicas": &two}},
		{"one-replica", 1, nil},
		{"isr-equals-rf", 2, map[string]*string{"min.insync.replicas": &two}},
		{"dlq", 3, map[string]*string{"min.insync.replicas": &one}},
	} {
		if _, err := adm.CreateTopic(ctx, 2, tc.rf, tc.cfg, tc.topic); err != nil {
			t.Fatalf("create %s: %v", tc.topic, err)
		}
	}

	checks, err := CheckDurability(ctx, DurabilityParams{
		Brokers: c.ListenAddrs(), Topics: []string{"safe", "one-replica", "isr-equals-rf", "missing"}, DeadLetterTopic: "dlq",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := byKey(checks)
	wantCheck(t, m, "replication_factor", "safe", "3", adapters.VerdictOK)
	wantCheck(t, m, "min_insync_replicas", "safe", "2", adapters.VerdictOK)
	wantCheck(t, m, "under_min_isr", "safe", "0 of 2 partitions", adapters.VerdictOK)
	if c := m[[2]string{"min_insync_replicas", "safe"}]; c.Source != "topic" {
		t.Errorf("min.insync.replicas set on the topic: source %q, want topic", c.Source)
	}
	// kfake does not know unclean.leader.election.enable: unknown, never guessed.
	wantCheck(t, m, "unclean_leader_election", "safe", "", adapters.VerdictUnknown)

	wantCheck(t, m, "replication_factor", "one-replica", "1", adapters.VerdictAtRisk)
	wantCheck(t, m, "min_insync_replicas", "one-replica", "1", adapters.VerdictAtRisk)
	if c := m[[2]string{"min_insync_replicas", "one-replica"}]; c.Source != "Kafka default" {
		t.Errorf("default min.insync.replicas: source %q, want Kafka default", c.Source)
	}
	wantCheck(t, m, "replication_factor", "isr-equals-rf", "2", adapters.VerdictAtRisk)
	wantCheck(t, m, "min_insync_replicas", "isr-equals-rf", "2", adapters.VerdictAtRisk)
	wantCheck(t, m, "topic", "missing", "topic does not exist", adapters.VerdictUnknown)

	wantCheck(t, m, "min_insync_replicas", "dlq", "1", adapters.VerdictAtRisk)
	wantCheck(t, m, "producer_acks", "dlq", "all", adapters.VerdictOK)
	wantCheck(t, m, "producer_idempotence", "dlq", "enabled", adapters.VerdictOK)
	for k := range m {
		if (k[0] == "producer_acks" || k[0] == "producer_idempotence") && k[1] != "dlq" {
			t.Errorf("producer check %s on %s, which the sidecar does not produce to", k[0], k[1])
		}
	}

	// The producer checks read the client's options: a client that would produce with
	// leader acks and without idempotence is at risk on both.
	weak, err := CheckDurability(ctx, DurabilityParams{
		Brokers: c.ListenAddrs(), DeadLetterTopic: "dlq",
		ClientOptions: []kgo.Opt{kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite()},
	})
	if err != nil {
		t.Fatal(err)
	}
	wm := byKey(weak)
	wantCheck(t, wm, "producer_acks", "dlq", "1", adapters.VerdictAtRisk)
	wantCheck(t, wm, "producer_idempotence", "dlq", "disabled", adapters.VerdictAtRisk)
}

// The dead-letter producer of New is configured as the durability check reads it.
func TestSourceProducesAsChecked(t *testing.T) {
	st := Defaults()
	st.Brokers, st.Group, st.Topics = []string{"127.0.0.1:1"}, "g", []string{"t"}
	s, err := New(st, "dlq")
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	}()
	if acks := s.cl.OptValue(kgo.RequiredAcks); acks != kgo.AllISRAcks() {
		t.Errorf("the adapter produces with acks %v, want all", acks)
	}
	if off := s.cl.OptValue(kgo.DisableIdempotentWrite); off != false {
		t.Errorf("the adapter's idempotent writes disabled = %v", off)
	}
}

func TestCheckDurabilityUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := CheckDurability(ctx, DurabilityParams{Brokers: []string{"127.0.0.1:1"}, Topics: []string{"t"}})
	if err == nil || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if took := time.Since(start); took > 9*time.Second {
		t.Errorf("took %v: a refused connection should fail before the deadline", took)
	}
}

// A partition whose in-sync replicas fell below min.insync.replicas is at risk now (writes
// with acks=all fail, and one more loss loses data), whatever the topic's settings.
func TestTopicChecksUnderMinISR(t *testing.T) {
	two, unclean := "2", "false"
	cfg := map[string]kadm.Config{
		"min.insync.replicas":            {Key: "min.insync.replicas", Value: &two},
		"unclean.leader.election.enable": {Key: "unclean.leader.election.enable", Value: &unclean},
	}
	d := kadm.TopicDetail{Topic: "orders", Partitions: kadm.PartitionDetails{
		0: {Partition: 0, Replicas: []int32{1, 2, 3}, ISR: []int32{1, 2, 3}},
		1: {Partition: 1, Replicas: []int32{1, 2, 3}, ISR: []int32{2}},
	}}
	m := byKey(topicChecks("b:9092", "orders", d, cfg, nil))
	wantCheck(t, m, "replication_factor", "orders", "3", adapters.VerdictOK)
	wantCheck(t, m, "min_insync_replicas", "orders", "2", adapters.VerdictOK)
	wantCheck(t, m, "under_min_isr", "orders", "1 of 2 partitions", adapters.VerdictAtRisk)
	d.Partitions[1] = kadm.PartitionDetail{Partition: 1, Replicas: []int32{1, 2, 3}, ISR: []int32{2, 3}}
	wantCheck(t, byKey(topicChecks("b:9092", "orders", d, cfg, nil)), "under_min_isr", "orders", "0 of 2 partitions", adapters.VerdictOK)
}
