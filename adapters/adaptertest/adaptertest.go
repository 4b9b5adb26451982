// Package adaptertest is the conformance suite every broker adapter runs against its real
// broker, after Watermill's pubsub/tests: one set of cases, one Harness per adapter.
//
// An adapter's e2e test (build tag e2e) builds a Harness and calls Run:
//
//	func TestConformance(t *testing.T) {
//		adaptertest.Run(t, adaptertest.Harness{
//			Name:      "rabbitmq",
//			Features:  adaptertest.Features{DeadLetter: true, SelectiveAck: true, Redelivered: true},
//			Setup:     func(t *testing.T, dest string) string { ...; return "dlx/" + dest + ".dlq" },
//			NewSource: func(t *testing.T, dest, dl string) adapters.Source { ... },
//			Produce:   func(t *testing.T, dest string, msgs ...adaptertest.Message) { ... },
//			ReadDeadLetters: func(t *testing.T, dl string, n int) []adaptertest.Message { ... },
//			Kill:      func(t *testing.T, src adapters.Source) { ... },
//		})
//	}
//
// Every case is a subtest with its own fresh destination (Setup is called once per case with
// a unique name made of lower-case letters, digits and '-', at most 80 bytes, valid as a
// Kafka/RocketMQ topic and a RabbitMQ queue). The cases check the contract of package
// adapters, not broker details:
//
//   - fields: Delivery.ID is the produced message ID, the payload and headers arrive
//     unchanged, Source is set, the delivery is not settled yet.
//   - ack: deliveries settled with nil are not redelivered to a new source after Close.
//   - not-done: deliveries settled with ErrNotDone are redelivered to a new source, with the
//     broker's redelivery hint when Features.Redelivered says it has one.
//   - mixed (Features.SelectiveAck, no MaxUnsettled): within one stream, exactly the
//     not-done ones return.
//   - dead-letter (Features.DeadLetter): the copy arrives at the target with the payload,
//     the original headers and every adapters.FailureHeaders header; the original, settled
//     with nil afterwards, is not redelivered; a source without a target answers
//     ErrNoDeadLetter.
//   - close-inflight: Close with unsettled deliveries returns within Features.CloseTimeout,
//     the settled ones stay acknowledged, the unsettled ones are redelivered, and a late
//     Settle(nil) after Close neither panics nor acknowledges.
//   - read-cancel: Read returns ctx.Err() promptly on cancel and deadline, ErrClosed when
//     Close happens during or before Read; a second Close returns ErrClosed.
//   - unclean-stop (Harness.Kill set): a source abandoned without Close (its connection
//     killed) loses nothing: a new source receives every unsettled delivery.
//   - order (Features.Ordered): deliveries of one Lane arrive in produce order.
//   - settle-twice: only the first Settle counts (nil then ErrNotDone stays acknowledged,
//     ErrNotDone then nil is redelivered).
//   - run-cancel: the lifecycle of package adapters. Ending Run's context closes the
//     source: Run returns nil within Features.CloseTimeout, Read answers ErrClosed, Ready
//     an error, what was settled done before stays acknowledged and what was settled not
//     done is redelivered; a second Run fails
//     at once.
//
// The suite starts every source it opens through Run (NewSource must not), and checks in
// every case that Run returns nil once Close returned.
//
// Cases hold at most Features.MaxUnsettled deliveries unsettled at once (a RabbitMQ source
// with prefetch 1 hands out nothing more until one is settled). A broker may redeliver a
// not-done delivery to the same source at once (RabbitMQ requeues it); the suite leaves
// such second copies unsettled (they return to the broker on Close).
//
// "Not redelivered" is proven positively where possible: after the checked deliveries the
// case produces a marker message and reads until the marker arrives, failing on any
// forbidden ID seen before it, and then keeps reading for Features.QuietPeriod (short) to
// catch stragglers. Everything else waits with deadlines and polling, never sleeps.
package adaptertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Message is one message produced to, or read back from, a broker by a Harness.
type Message struct {
	// ID is the message ID in the form the adapter under test is configured to read
	// (Kafka header, RabbitMQ message_id property, RocketMQ key...). The harness must put
	// it where the source finds it.
	ID      string
	Payload []byte
	// Key is the ordering key (Kafka key, RocketMQ sharding key); "" for none. The suite
	// gives all messages of an order check one key, so that they share one lane.
	Key     string
	Headers []adapters.Header
}

// Features says what the broker and adapter under test promise; cases that need a
// missing feature are skipped with a message.
type Features struct {
	// Ordered: deliveries of one Lane are handed out in produce order, and messages with
	// the same Key share a Lane.
	Ordered bool
	// DeadLetter: the adapter supports DeadLetter with failure headers on the copy.
	DeadLetter bool
	// SelectiveAck: acknowledging one delivery never depends on another one (RabbitMQ,
	// RocketMQ concurrent). Kafka commits contiguous prefixes, so it does not.
	SelectiveAck bool
	// Redelivered: a redelivered message carries Delivery.Redelivered or a positive
	// Delivery.DeliveryCount.
	Redelivered bool
	// Keys: Delivery.Key carries Message.Key.
	Keys bool
	// MaxUnsettled is how many unsettled deliveries the source hands out at most (RabbitMQ
	// prefetch, one per lane for strictly serial modes); 0 means at least 6. Cases never
	// hold more than this many unsettled at once, and the mixed case needs 0.
	MaxUnsettled int
	// Timeout bounds how long the suite waits for a message (also for redeliveries, which
	// may need a broker-side timeout to pass); default 30s.
	Timeout time.Duration
	// QuietPeriod is how long the suite keeps reading after the marker message to catch a
	// forbidden redelivery arriving late; default 1.5s. Keep it short.
	QuietPeriod time.Duration
	// CloseTimeout bounds how long Close may take with unsettled deliveries; default 10s.
	CloseTimeout time.Duration
}

// Harness connects the suite to one adapter and its real broker.
type Harness struct {
	// Name labels failures ("rabbitmq", "kafka").
	Name string
	// Features selects which cases run.
	Features Features
	// Setup creates dest fresh and empty and, when Features.DeadLetter is set, a dead-letter
	// target for it; it returns that target in the adapter's syntax ("" when unsupported).
	// It should register cleanup with t.Cleanup. Called once per case.
	Setup func(t *testing.T, dest string) (deadLetter string)
	// NewSource opens a source consuming dest, with the given dead-letter target ("" = none).
	// It does not call Run: the suite runs the source itself. The suite closes it; the harness may also close it in t.Cleanup (Close is idempotent).
	// Sources opened one after another on the same dest form one consumer group, so the
	// second sees what the first did not acknowledge.
	NewSource func(t *testing.T, dest, deadLetter string) adapters.Source
	// Produce publishes msgs to dest in order and returns once the broker confirmed them.
	Produce func(t *testing.T, dest string, msgs ...Message)
	// ReadDeadLetters returns the messages that arrived at deadLetter (payload, ID where the
	// adapter copies it, headers), waiting up to Features.Timeout for n of them.
	ReadDeadLetters func(t *testing.T, deadLetter string, n int) []Message
	// Kill abandons src without Close, as kill -9 would: the broker connection is cut, no
	// pending acknowledgement is flushed, and src must not reconnect. nil skips the
	// unclean-stop case. The suite calls src.Close afterwards only to free resources.
	Kill func(t *testing.T, src adapters.Source)
}

// Run runs every conformance case against h, each as a subtest.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Setup == nil || h.NewSource == nil || h.Produce == nil {
		t.Fatal("adaptertest: Harness.Setup, NewSource and Produce are required")
	}
	if h.Features.Timeout <= 0 {
		h.Features.Timeout = 30 * time.Second
	}
	if h.Features.QuietPeriod <= 0 {
		h.Features.QuietPeriod = 1500 * time.Millisecond
	}
	if h.Features.CloseTimeout <= 0 {
		h.Features.CloseTimeout = 10 * time.Second
	}
	s := &suite{h: h}
	cases := []struct {
		name string
		run  func(t *testing.T, c *tcase)
	}{
		{"fields", s.fields},
		{"ack", s.ack},
		{"not-done", s.notDone},
		{"mixed", s.mixed},
		{"dead-letter", s.deadLetter},
		{"close-inflight", s.closeInflight},
		{"read-cancel", s.readCancel},
		{"unclean-stop", s.uncleanStop},
		{"order", s.order},
		{"settle-twice", s.settleTwice},
		{"run-cancel", s.runCancel},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tc := &tcase{s: s, t: t, dest: destName(h.Name, c.name)}
			tc.deadLetter = h.Setup(t, tc.dest)
			c.run(t, tc)
		})
	}
}

type suite struct{ h Harness }

// tcase is one case's destination and helpers.
type tcase struct {
	s          *suite
	t          *testing.T
	dest       string
	deadLetter string
	runs       map[adapters.Source]*run
}

// run is one source's Run: cancel ends its context, ended receives what it returned.
type run struct {
	cancel context.CancelFunc
	ended  chan error
}

// destName returns a unique destination name valid for every supported broker.
func destName(harness, cname string) string {
	var b strings.Builder
	b.WriteString("mqsc-")
	for _, r := range strings.ToLower(harness + "-" + cname) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := b.String()
	if len(name) > 60 {
		name = name[:60]
	}
	return name + "-" + randHex(6)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// msgs builds n messages with IDs "<prefix>-000".., payloads "payload <id>" and one header.
func (c *tcase) msgs(prefix string, n int, key string) []Message {
	out := make([]Message, n)
	for i := range out {
		id := fmt.Sprintf("%s-%s-%03d", prefix, randHex(3), i)
		out[i] = Message{
			ID:      id,
			Payload: []byte("payload " + id),
			Key:     key,
			Headers: []adapters.Header{{Key: "x-test-seq", Value: fmt.Sprint(i)}},
		}
	}
	return out
}

// hold returns how many unsettled deliveries a case may keep at once, at most n.
func (c *tcase) hold(n int) int {
	if m := c.s.h.Features.MaxUnsettled; m > 0 && m < n {
		return m
	}
	return n
}

func (c *tcase) open() adapters.Source {
	c.t.Helper()
	return c.openDL("")
}

func (c *tcase) openDL(deadLetter string) adapters.Source {
	c.t.Helper()
	src := c.s.h.NewSource(c.t, c.dest, deadLetter)
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{cancel: cancel, ended: make(chan error, 1)}
	go func() { r.ended <- src.Run(ctx) }()
	if c.runs == nil {
		c.runs = map[adapters.Source]*run{}
	}
	c.runs[src] = r
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.s.h.Features.CloseTimeout)
		defer cancel()
		_ = src.Close(ctx)
		r.cancel()
		c.runEnded(src)
	})
	return src
}

// runEnded fails the test unless src's Run returns nil within Features.CloseTimeout (it
// returns at once after the first call).
func (c *tcase) runEnded(src adapters.Source) {
	c.t.Helper()
	r := c.runs[src]
	select {
	case err, ok := <-r.ended:
		if ok && err != nil {
			c.t.Errorf("%s: Run returned %v, want nil", c.s.h.Name, err)
		}
		if ok {
			close(r.ended)
		}
	case <-time.After(c.s.h.Features.CloseTimeout):
		c.t.Errorf("%s: Run did not return within %v", c.s.h.Name, c.s.h.Features.CloseTimeout)
	}
}

func (c *tcase) close(src adapters.Source) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), c.s.h.Features.CloseTimeout)
	defer cancel()
	start := time.Now()
	if err := src.Close(ctx); err != nil {
		c.t.Fatalf("%s: Close: %v", c.s.h.Name, err)
	}
	if d := time.Since(start); d > c.s.h.Features.CloseTimeout {
		c.t.Fatalf("%s: Close took %v, more than %v", c.s.h.Name, d, c.s.h.Features.CloseTimeout)
	}
	c.runEnded(src)
}

// read reads one delivery, failing the test after Features.Timeout.
func (c *tcase) read(src adapters.Source) *adapters.Delivery {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), c.s.h.Features.Timeout)
	defer cancel()
	d, err := src.Read(ctx)
	if err != nil {
		c.t.Fatalf("%s: Read: %v (waited up to %v)", c.s.h.Name, err, c.s.h.Features.Timeout)
	}
	checkDelivery(c.t, d)
	return d
}

// readIDs reads until every ID in want arrived, and returns the first delivery of each ID,
// after passing it to settle (when not nil). A second copy of an ID (a broker that
// redelivers a not-done delivery at once, as RabbitMQ does) is left unsettled: settling it
// not-done again could make such a broker hand out the same message forever; unsettled,
// it returns to the broker on Close like any other. Unknown IDs fail the test.
func (c *tcase) readIDs(src adapters.Source, want []string, settle func(*adapters.Delivery)) map[string]*adapters.Delivery {
	c.t.Helper()
	got := make(map[string]*adapters.Delivery, len(want))
	missing := make(map[string]bool, len(want))
	for _, id := range want {
		missing[id] = true
	}
	for len(missing) > 0 {
		d := c.read(src)
		if !slices.Contains(want, d.ID) {
			c.t.Fatalf("%s: unexpected delivery %q while waiting for %v", c.s.h.Name, d.ID, keys(missing))
		}
		if got[d.ID] != nil {
			continue
		}
		delete(missing, d.ID)
		got[d.ID] = d
		if settle != nil {
			settle(d)
		}
	}
	return got
}

// expectOnly proves that a new read of src yields every ID in want (settling each with
// nil) and none in forbid: it produces a marker after want, reads until want and the
// marker arrived, then keeps reading for the quiet period. Redeliveries of IDs in want are
// tolerated (at-least-once). It returns the first delivery of each wanted ID.
func (c *tcase) expectOnly(src adapters.Source, want, forbid []string) map[string]*adapters.Delivery {
	c.t.Helper()
	marker := c.msgs("marker", 1, "")[0]
	c.s.h.Produce(c.t, c.dest, marker)
	got := make(map[string]*adapters.Delivery)
	markerSeen := false
	deadline := time.Now().Add(c.s.h.Features.Timeout)
	quietUntil := time.Time{}
	for {
		if markerSeen && len(got) == len(want) && quietUntil.IsZero() {
			quietUntil = time.Now().Add(c.s.h.Features.QuietPeriod)
		}
		until := deadline
		if !quietUntil.IsZero() {
			until = quietUntil
		}
		ctx, cancel := context.WithDeadline(context.Background(), until)
		d, err := src.Read(ctx)
		cancel()
		if err != nil {
			if !quietUntil.IsZero() && errors.Is(err, context.DeadlineExceeded) {
				return got
			}
			missingIDs := []string{}
			for _, id := range want {
				if got[id] == nil {
					missingIDs = append(missingIDs, id)
				}
			}
			c.t.Fatalf("%s: Read: %v; still missing %v (marker seen: %v)", c.s.h.Name, err, missingIDs, markerSeen)
		}
		checkDelivery(c.t, d)
		switch {
		case slices.Contains(forbid, d.ID):
			c.t.Fatalf("%s: %q was delivered again although it had been acknowledged", c.s.h.Name, d.ID)
		case d.ID == marker.ID:
			markerSeen = true
		case slices.Contains(want, d.ID):
			if got[d.ID] == nil {
				got[d.ID] = d
			}
		default:
			c.t.Fatalf("%s: unexpected delivery %q", c.s.h.Name, d.ID)
		}
		d.Settle(nil)
	}
}

func checkDelivery(t *testing.T, d *adapters.Delivery) {
	t.Helper()
	switch {
	case d == nil:
		t.Fatal("Read returned a nil delivery without an error")
	case d.ID == "":
		t.Fatal("Delivery.ID is empty")
	case d.Ack == nil:
		t.Fatalf("Delivery %q has no Ack function", d.ID)
	case d.Source == "":
		t.Fatalf("Delivery %q has no Source", d.ID)
	}
}

func ids(ms []Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func hasHeader(hs []adapters.Header, key, value string) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Key, key) && h.Value == value {
			return true
		}
	}
	return false
}

// fields: ID mapping, payload, headers, key, source.
func (s *suite) fields(t *testing.T, c *tcase) {
	ms := c.msgs("fields", 3, "k1")
	ms[0].Headers = append(ms[0].Headers, adapters.Header{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
	s.h.Produce(t, c.dest, ms...)
	byID := map[string]Message{}
	for _, m := range ms {
		byID[m.ID] = m
	}
	src := c.open()
	c.readIDs(src, ids(ms), func(d *adapters.Delivery) {
		m := byID[d.ID]
		if string(d.Payload) != string(m.Payload) {
			t.Errorf("%s: %q payload = %q, want %q", s.h.Name, m.ID, d.Payload, m.Payload)
		}
		for _, h := range m.Headers {
			if !hasHeader(d.Headers, h.Key, h.Value) {
				t.Errorf("%s: %q lacks header %s=%q; got %v", s.h.Name, m.ID, h.Key, h.Value, d.Headers)
			}
		}
		if s.h.Features.Keys && d.Key != m.Key {
			t.Errorf("%s: %q Key = %q, want %q", s.h.Name, m.ID, d.Key, m.Key)
		}
		if d.Settled() {
			t.Errorf("%s: %q is settled before anyone settled it", s.h.Name, m.ID)
		}
		if d.Redelivered || d.DeliveryCount != 0 {
			t.Errorf("%s: first delivery of %q has Redelivered=%v DeliveryCount=%d", s.h.Name, m.ID, d.Redelivered, d.DeliveryCount)
		}
		d.Settle(nil)
		if !d.Settled() {
			t.Errorf("%s: %q not Settled() after Settle", s.h.Name, m.ID)
		}
	})
	c.close(src)
}

// ack: settled with nil → not redelivered after Close.
func (s *suite) ack(t *testing.T, c *tcase) {
	ms := c.msgs("ack", 5, "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	c.readIDs(src, ids(ms), func(d *adapters.Delivery) { d.Settle(nil) })
	c.close(src)

	src2 := c.open()
	c.expectOnly(src2, nil, ids(ms))
	c.close(src2)
}

// not-done: settled with ErrNotDone → redelivered to the next source, with the hint.
func (s *suite) notDone(t *testing.T, c *tcase) {
	ms := c.msgs("notdone", c.hold(3), "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	c.readIDs(src, ids(ms), func(d *adapters.Delivery) { d.Settle(adapters.ErrNotDone) })
	c.close(src)

	src2 := c.open()
	got := c.expectOnly(src2, ids(ms), nil)
	if s.h.Features.Redelivered {
		for id, d := range got {
			if !d.Redelivered && d.DeliveryCount == 0 {
				t.Errorf("%s: redelivered %q has neither Redelivered nor DeliveryCount set", s.h.Name, id)
			}
		}
	}
	c.close(src2)
}

// mixed: with selective acks, exactly the not-done deliveries return.
func (s *suite) mixed(t *testing.T, c *tcase) {
	if !s.h.Features.SelectiveAck {
		t.Skipf("%s acknowledges contiguous prefixes only (Features.SelectiveAck unset)", s.h.Name)
	}
	if s.h.Features.MaxUnsettled > 0 {
		t.Skipf("%s hands out at most %d unsettled deliveries; a not-done one may block the rest", s.h.Name, s.h.Features.MaxUnsettled)
	}
	ms := c.msgs("mixed", 6, "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	var done, notDone []string
	c.readIDs(src, ids(ms), func(d *adapters.Delivery) {
		if len(done) <= len(notDone) {
			done = append(done, d.ID)
			d.Settle(nil)
		} else {
			notDone = append(notDone, d.ID)
			d.Settle(adapters.ErrNotDone)
		}
	})
	c.close(src)

	src2 := c.open()
	c.expectOnly(src2, notDone, done)
	c.close(src2)
}

// dead-letter: the copy carries payload, original headers and failure headers; the
// original is acknowledged.
func (s *suite) deadLetter(t *testing.T, c *tcase) {
	if !s.h.Features.DeadLetter {
		t.Skipf("%s does not support dead letters (Features.DeadLetter unset)", s.h.Name)
	}
	if c.deadLetter == "" || s.h.ReadDeadLetters == nil {
		t.Fatalf("%s: Features.DeadLetter needs Setup to return a target and ReadDeadLetters", s.h.Name)
	}
	// Without a target, DeadLetter refuses with ErrNoDeadLetter.
	ms := c.msgs("dl", 1, "k1")
	ms[0].Headers = append(ms[0].Headers, adapters.Header{Key: "x-original", Value: "kept"})
	s.h.Produce(t, c.dest, ms...)
	plain := c.open()
	d := c.read(plain)
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Features.Timeout)
	defer cancel()
	if err := plain.DeadLetter(ctx, d, adapters.Failure{Reason: "permanent"}); !errors.Is(err, adapters.ErrNoDeadLetter) {
		t.Fatalf("%s: DeadLetter without a target = %v, want ErrNoDeadLetter", s.h.Name, err)
	}
	d.Settle(adapters.ErrNotDone)
	c.close(plain)

	src := c.openDL(c.deadLetter)
	victim := c.readIDs(src, ids(ms), nil)[ms[0].ID]
	f := adapters.Failure{
		Reason:   "permanent",
		Status:   422,
		Error:    "app answered 422 Unprocessable Entity",
		Attempts: 3,
		Time:     time.Now(),
	}
	if err := src.DeadLetter(ctx, victim, f); err != nil {
		t.Fatalf("%s: DeadLetter: %v", s.h.Name, err)
	}
	victim.Settle(nil)

	dls := s.h.ReadDeadLetters(t, c.deadLetter, 1)
	if len(dls) != 1 {
		t.Fatalf("%s: %d dead letters, want 1: %+v", s.h.Name, len(dls), dls)
	}
	dl := dls[0]
	if string(dl.Payload) != string(ms[0].Payload) {
		t.Errorf("%s: dead letter payload = %q, want %q", s.h.Name, dl.Payload, ms[0].Payload)
	}
	for _, h := range adapters.FailureHeaders(victim, f) {
		if !hasHeader(dl.Headers, h.Key, h.Value) {
			t.Errorf("%s: dead letter lacks failure header %s=%q; got %v", s.h.Name, h.Key, h.Value, dl.Headers)
		}
	}
	for _, h := range ms[0].Headers {
		if !hasHeader(dl.Headers, h.Key, h.Value) {
			t.Errorf("%s: dead letter lacks original header %s=%q; got %v", s.h.Name, h.Key, h.Value, dl.Headers)
		}
	}
	c.close(src)

	src2 := c.open()
	c.expectOnly(src2, nil, ids(ms))
	c.close(src2)
}

// close-inflight: Close with unsettled deliveries is bounded; they come back; a late
// settle after Close does nothing.
func (s *suite) closeInflight(t *testing.T, c *tcase) {
	ms := c.msgs("inflight", 2+c.hold(3), "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	var settled, unsettled []*adapters.Delivery
	c.readIDs(src, ids(ms), func(d *adapters.Delivery) {
		// The first two in read order are a prefix of every lane, so even brokers that
		// commit contiguous prefixes acknowledge exactly them.
		if len(settled) < 2 {
			settled = append(settled, d)
			d.Settle(nil)
		} else {
			unsettled = append(unsettled, d)
		}
	})
	c.close(src)
	// Late settlement after Close: must not panic and must not acknowledge.
	for _, d := range unsettled {
		d.Settle(nil)
	}
	if _, err := src.Read(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("%s: Read after Close = %v, want ErrClosed", s.h.Name, err)
	}

	src2 := c.open()
	c.expectOnly(src2, deliveryIDs(unsettled), deliveryIDs(settled))
	c.close(src2)
}

func deliveryIDs(ds []*adapters.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

// read-cancel: Read honours ctx and Close promptly.
func (s *suite) readCancel(t *testing.T, c *tcase) {
	src := c.open()
	const prompt = 2 * time.Second

	// Cancel while blocked.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := src.Read(ctx)
		errc <- err
	}()
	// Give Read a chance to block first; not a synchronisation, either order must work.
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Read after cancel = %v, want context.Canceled", s.h.Name, err)
		}
	case <-time.After(prompt):
		t.Fatalf("%s: Read did not return within %v of ctx cancel", s.h.Name, prompt)
	}

	// Deadline.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if _, err := src.Read(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s: Read with deadline = %v, want context.DeadlineExceeded", s.h.Name, err)
	}
	if d := time.Since(start); d > prompt {
		t.Errorf("%s: Read with a 100ms deadline returned after %v", s.h.Name, d)
	}

	// Close while blocked.
	go func() {
		_, err := src.Read(context.Background())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.close(src)
	select {
	case err := <-errc:
		if !errors.Is(err, adapters.ErrClosed) {
			t.Errorf("%s: Read during Close = %v, want ErrClosed", s.h.Name, err)
		}
	case <-time.After(prompt):
		t.Fatalf("%s: Read did not return within %v of Close", s.h.Name, prompt)
	}
	if _, err := src.Read(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("%s: Read after Close = %v, want ErrClosed", s.h.Name, err)
	}
	if err := src.Close(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("%s: second Close = %v, want ErrClosed", s.h.Name, err)
	}
	if err := src.Ready(); err == nil {
		t.Errorf("%s: Ready after Close = nil, want an error", s.h.Name)
	}
}

// unclean-stop: abandon a source without Close; a new one gets everything unsettled.
func (s *suite) uncleanStop(t *testing.T, c *tcase) {
	if s.h.Kill == nil {
		t.Skipf("%s harness has no Kill hook", s.h.Name)
	}
	ms := c.msgs("unclean", c.hold(5), "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	got := c.readIDs(src, ids(ms), nil)
	s.h.Kill(t, src)
	// Settling after the kill must neither panic nor reach the broker.
	for _, d := range got {
		d.Settle(nil)
	}

	src2 := c.open()
	again := c.expectOnly(src2, ids(ms), nil)
	if s.h.Features.Redelivered {
		for id, d := range again {
			if !d.Redelivered && d.DeliveryCount == 0 {
				t.Errorf("%s: redelivered %q has neither Redelivered nor DeliveryCount set", s.h.Name, id)
			}
		}
	}
	c.close(src2)
}

// order: deliveries of one lane follow produce order.
func (s *suite) order(t *testing.T, c *tcase) {
	if !s.h.Features.Ordered {
		t.Skipf("%s promises no order (Features.Ordered unset)", s.h.Name)
	}
	const n = 50
	ms := c.msgs("order", n, "same-key")
	s.h.Produce(t, c.dest, ms...)
	pos := make(map[string]int, n)
	for i, m := range ms {
		pos[m.ID] = i
	}
	src := c.open()
	last := map[string]int{}
	c.readIDs(src, ids(ms), func(d *adapters.Delivery) {
		if d.Lane == "" {
			t.Errorf("%s: Features.Ordered but %q has no Lane", s.h.Name, d.ID)
		}
		p := pos[d.ID]
		if prev, ok := last[d.Lane]; ok && p < prev {
			t.Errorf("%s: lane %q: %q (#%d) arrived after #%d", s.h.Name, d.Lane, d.ID, p, prev)
		}
		last[d.Lane] = p
		d.Settle(nil)
	})
	c.close(src)
}

// settle-twice: only the first Settle counts.
func (s *suite) settleTwice(t *testing.T, c *tcase) {
	ms := c.msgs("twice", 2, "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	// The first read (the first produced, on ordered brokers) is settled done first, so
	// prefix-committing brokers acknowledge exactly it.
	a := c.read(src)
	a.Settle(nil)
	a.Settle(nil)
	a.Settle(adapters.ErrNotDone)
	b := c.read(src)
	if b.ID == a.ID {
		t.Fatalf("%s: %q delivered again after Settle(nil)", s.h.Name, a.ID)
	}
	b.Settle(adapters.ErrNotDone)
	b.Settle(nil)
	if !a.Settled() || !b.Settled() {
		t.Fatalf("%s: Settled() = %v, %v after Settle", s.h.Name, a.Settled(), b.Settled())
	}
	c.close(src)

	src2 := c.open()
	c.expectOnly(src2, []string{b.ID}, []string{a.ID})
	c.close(src2)
}

// run-cancel: ending Run's context closes the source.
func (s *suite) runCancel(t *testing.T, c *tcase) {
	ms := c.msgs("runcancel", 2, "k1")
	s.h.Produce(t, c.dest, ms...)
	src := c.open()
	// As in settle-twice: the first read is done, the second not, so that prefix-committing
	// brokers acknowledge exactly the first.
	a := c.read(src)
	a.Settle(nil)
	b := c.read(src)
	b.Settle(adapters.ErrNotDone)
	c.runs[src].cancel()
	c.runEnded(src)
	again := make(chan error, 1)
	go func() { again <- src.Run(context.Background()) }()
	select {
	case err := <-again:
		if err == nil {
			t.Errorf("%s: a second Run returned nil, want an error", s.h.Name)
		}
	case <-time.After(c.s.h.Features.CloseTimeout):
		t.Fatalf("%s: a second Run did not return", s.h.Name)
	}
	if _, err := src.Read(context.Background()); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("%s: Read after Run's context ended = %v, want ErrClosed", s.h.Name, err)
	}
	if err := src.Ready(); err == nil {
		t.Errorf("%s: Ready after Run's context ended = nil, want an error", s.h.Name)
	}

	src2 := c.open()
	c.expectOnly(src2, []string{b.ID}, []string{a.ID})
	c.close(src2)
}
