package kafka

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
)

// testConfig is a consumer of topic in group "g-<topic>" reading IDs from the message-id
// header.
func testConfig(brokers []string, topic string) Settings {
	c := Defaults()
	c.Brokers = brokers
	c.Group = "g-" + topic
	c.Topics = []string{topic}
	c.MessageID = "header:message-id"
	c.CommitInterval = 100 * time.Millisecond
	return c
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// fastGroup makes rebalances quick in tests.
var fastGroup = []kgo.Opt{kgo.SessionTimeout(6 * time.Second), kgo.HeartbeatInterval(500 * time.Millisecond), kgo.RebalanceTimeout(10 * time.Second)}

// harness builds the conformance harness for brokers; partitions per topic is 1 so that
// the order case has one lane.
func harness(brokers []string) adaptertest.Harness {
	admin := func(t *testing.T) (*kadm.Client, *kgo.Client) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		return kadm.NewClient(cl), cl
	}
	create := func(t *testing.T, topic string) {
		adm, cl := admin(t)
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := adm.CreateTopics(ctx, 1, 1, nil, topic)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			t.Fatalf("create topic %s: %v", topic, err)
		}
	}
	return adaptertest.Harness{
		Name:     "kafka",
		Features: adaptertest.Features{Ordered: true, DeadLetter: true, Keys: true, Timeout: 30 * time.Second},
		Setup: func(t *testing.T, dest string) string {
			create(t, dest)
			create(t, dest+"-dlq")
			return dest + "-dlq"
		},
		NewSource: func(t *testing.T, dest, dl string) adapters.Source {
			s, err := New(testConfig(brokers, dest), dl, WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Produce: func(t *testing.T, dest string, msgs ...adaptertest.Message) {
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(dest))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			recs := make([]*kgo.Record, len(msgs))
			for i, m := range msgs {
				r := &kgo.Record{Value: m.Payload, Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte(m.ID)}}}
				if m.Key != "" {
					r.Key = []byte(m.Key)
				}
				for _, h := range m.Headers {
					r.Headers = append(r.Headers, kgo.RecordHeader{Key: h.Key, Value: []byte(h.Value)})
				}
				recs[i] = r
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
				t.Fatalf("produce: %v", err)
			}
		},
		ReadDeadLetters: func(t *testing.T, dl string, n int) []adaptertest.Message {
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(dl), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out []adaptertest.Message
			for len(out) < n && ctx.Err() == nil {
				cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
					m := adaptertest.Message{Payload: r.Value, Key: string(r.Key)}
					for _, h := range r.Headers {
						if h.Key == "message-id" {
							m.ID = string(h.Value)
						}
						m.Headers = append(m.Headers, adapters.Header{Key: h.Key, Value: string(h.Value)})
					}
					out = append(out, m)
				})
			}
			return out
		},
		Kill: func(t *testing.T, src adapters.Source) { src.(*Source).kill() },
	}
}

// shareHarness is harness for source.kafka.mode: share: each record is acknowledged on its
// own (SelectiveAck), the broker counts deliveries (Redelivered), and there is no order.
func shareHarness(brokers []string) adaptertest.Harness {
	h := harness(brokers)
	h.Name = "kafka-share"
	h.Features = adaptertest.Features{DeadLetter: true, Keys: true, SelectiveAck: true, Redelivered: true, Timeout: 30 * time.Second}
	h.NewSource = func(t *testing.T, dest, dl string) adapters.Source {
		c := testConfig(brokers, dest)
		c.Mode = ModeShare
		s, err := NewShare(c, dl, WithLogger(testLogger(t)), WithMaxInflight(16))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	h.Kill = func(t *testing.T, src adapters.Source) { src.(*ShareSource).kill() }
	return h
}
