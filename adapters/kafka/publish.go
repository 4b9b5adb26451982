package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// IDHeader is the record header the publisher writes the message ID to. The consumer side
// reads it with source.kafka.message_id: header:ce-id, so that a message published twice
// (a retry after a 504) is pushed to the consuming app once.
const IDHeader = "ce-id"

// Publisher is the Kafka producer side (adapters.Publisher): its own franz-go client on the
// source's brokers and credentials, with acks=all and the idempotent producer (franz-go's
// defaults, stated in producerOpts as for dead letters), unlimited retries within a record
// delivery timeout of publish.timeout. Publish returns after the partition leader
// answered that every in-sync replica has the record. Concurrent publishes share produce
// requests: while one is unanswered, the records that arrive are held and then leave
// together (waves); a lone publish leaves at once.
//
// Broker down: Run pings the brokers every second (at once after a failed connection);
// while no broker answers, Publish fails at once with ErrUnavailable and the reason,
// instead of waiting for its timeout. A publish that failed while no produce request was
// written to any broker during its life is ErrUnavailable (nothing left); one that failed
// after a produce request was written is ErrOutcomeUnknown, as it may be stored.
type Publisher struct {
	cfg  Settings
	cl   *kgo.Client
	log  *slog.Logger
	life lifecycle.Loop

	waves     waves                 // concurrent publishes share produce requests
	known     sync.Map              // topics the brokers reported to exist (checkTopic)
	writes    atomic.Uint64         // produce requests written to a broker
	down      atomic.Pointer[error] // nil = a broker answered the last ping (or none yet)
	kick      chan struct{}
	stop      chan struct{}
	closeOnce sync.Once
	extra     []kgo.Opt
}

// PublisherOption configures NewPublisher.
type PublisherOption func(*Publisher)

// WithPublisherLogger sets the logger.
func WithPublisherLogger(l *slog.Logger) PublisherOption { return func(p *Publisher) { p.log = l } }

// WithPublisherClientOptions adds franz-go options (tests).
func WithPublisherClientOptions(opts ...kgo.Opt) PublisherOption {
	return func(p *Publisher) { p.extra = append(p.extra, opts...) }
}

// pingEvery is the interval of Run's pings.
const pingEvery = time.Second

// NewPublisher creates the producer on cfg's brokers, SASL and TLS (the source's
// connection settings); timeout bounds the delivery of one record (publish.timeout). It
// starts no goroutine of its own (franz-go's client connects on first use).
func NewPublisher(cfg Settings, timeout time.Duration, opts ...PublisherOption) (*Publisher, error) {
	var ck settings.Checker
	ck.HostPorts("source.kafka.brokers", cfg.Brokers, "credentials go in source.kafka.sasl")
	if len(ck.Problems) > 0 {
		return nil, ck.Err("kafka publisher")
	}
	p := &Publisher{cfg: cfg, log: slog.Default(), kick: make(chan struct{}, 1), stop: make(chan struct{})}
	for _, o := range opts {
		o(p)
	}
	p.log = p.log.With("publisher", "kafka")
	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RecordDeliveryTimeout(timeout),
		// Records linger until the waves release them (waves); the linger bounds the
		// wait of a record the waves did not release (one whose topic's partitions were
		// not known yet when it was produced).
		kgo.ProducerLinger(waveLinger),
		kgo.ProducerBatchMaxBytes(16 << 20),
		kgo.WithHooks(publishHooks{p}),
		kgo.WithLogger(kgoLogger{p.log}),
	}
	cl, err := newClient(cfg, kopts, p.extra)
	if err != nil {
		return nil, err
	}
	p.cl = cl
	p.waves.release = func() {
		// Flush with a context already done stops the lingers of every partition (the
		// sinks then drain what they hold) and returns without waiting.
		_ = cl.Flush(doneCtx)
	}
	return p, nil
}

// doneCtx is a context that is already done.
var doneCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// waveLinger bounds how long a record lingers in the client when no wave releases it.
const waveLinger = 5 * time.Millisecond

// waves make concurrent publishes share produce requests without making a lone publish
// wait. Records linger in the client until released: a record produced while no released
// record is unanswered is released at once (with any held ones); one produced while
// released records are unanswered is held, and the held records are all released when
// the last released one is answered. So one wave is in flight at a time, and the records
// that arrive meanwhile leave together in the next produce request instead of one request
// each (franz-go sends up to five per broker at once with linger 0: 16 concurrent
// publishes made ~0.46 requests per publish on kfake, ~50 µs of CPU each).
type waves struct {
	mu      sync.Mutex
	wave    uint64 // the last wave released: records of waves up to it were released
	sending int    // released records not answered yet
	held    int    // records of wave+1, not released yet
	release func() // stops the client's lingers (NewPublisher)
}

// waveRec is one record's place in the waves, guarded by waves.mu.
type waveRec struct {
	wave     uint64
	counted  bool // produced counted it (in sending or held)
	finished bool // its promise ran
}

// produced counts r once the client holds it, and releases the wave when none is in
// flight.
func (g *waves) produced(r *waveRec) {
	g.mu.Lock()
	if r.finished { // answered already (failed before it was buffered, say)
		g.mu.Unlock()
		return
	}
	r.counted = true
	if g.sending > 0 {
		g.held++
		r.wave = g.wave + 1
		g.mu.Unlock()
		return
	}
	g.wave++
	r.wave = g.wave
	g.sending += g.held + 1
	g.held = 0
	g.mu.Unlock()
	g.release()
}

// finished uncounts r when its promise runs, and releases the held records when it was
// the last released one unanswered.
func (g *waves) finished(r *waveRec) {
	g.mu.Lock()
	r.finished = true
	if !r.counted {
		g.mu.Unlock()
		return
	}
	if r.wave <= g.wave {
		g.sending--
	} else {
		g.held--
	}
	next := g.sending == 0 && g.held > 0
	if next {
		g.wave++
		g.sending, g.held = g.held, 0
	}
	g.mu.Unlock()
	if next {
		go g.release() // not on the client's promise goroutine
	}
}

// publishHooks count produce writes and notice failed connections.
type publishHooks struct{ p *Publisher }

func (h publishHooks) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == 0 && err == nil { // Produce
		h.p.writes.Add(1)
	}
}

func (h publishHooks) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		select {
		case h.p.kick <- struct{}{}:
		default:
		}
	}
}

// Run pings the brokers until ctx ends or Close (see Publisher); cancelling ctx closes the
// publisher.
func (p *Publisher) Run(ctx context.Context) error {
	return p.life.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, p.Close), func() error {
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return nil
			case <-t.C:
			case <-p.kick:
			}
			p.ping()
			t.Reset(pingEvery)
		}
	})
}

func (p *Publisher) ping() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := p.cl.Ping(ctx)
	if err != nil {
		err = fmt.Errorf("kafka: no broker of %s answers: %w", strings.Join(p.cfg.Brokers, ","), err)
		if p.down.Swap(&err) == nil {
			p.log.Warn("brokers unreachable; publishes are answered 503 until one answers", "error", err)
		}
		return
	}
	if p.down.Swap(nil) != nil {
		p.log.Info("brokers reachable again")
	}
}

// Publish implements adapters.Publisher.
func (p *Publisher) Publish(ctx context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	if e := p.down.Load(); e != nil {
		return adapters.Receipt{}, fmt.Errorf("%w: %w", adapters.ErrUnavailable, *e)
	}
	if !validTopic(m.Topic) {
		return adapters.Receipt{}, fmt.Errorf("%w: %q is not a valid Kafka topic name", adapters.ErrUnknownTopic, m.Topic)
	}
	if err := p.checkTopic(ctx, m.Topic); err != nil {
		return adapters.Receipt{}, err
	}
	rec := &kgo.Record{Topic: m.Topic, Value: m.Payload, Headers: make([]kgo.RecordHeader, 0, len(m.Headers)+2)}
	if m.Key != "" {
		rec.Key = []byte(m.Key)
	}
	for _, h := range m.Headers {
		if strings.EqualFold(h.Key, IDHeader) || (m.ContentType != "" && strings.EqualFold(h.Key, "content-type")) {
			continue // written below, once
		}
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: []byte(h.Value)})
	}
	if m.ContentType != "" {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "content-type", Value: []byte(m.ContentType)})
	}
	rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: IDHeader, Value: []byte(m.ID)})
	before := p.writes.Load()
	type result struct {
		r   *kgo.Record
		err error
	}
	done := make(chan result, 1)
	var w waveRec
	p.cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
		p.waves.finished(&w)
		done <- result{r, err}
	})
	p.waves.produced(&w)
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		// The idempotent producer fails a record that was sent only once the broker
		// answered (or the connection broke), which may take longer than the request may
		// wait: answer now; the record may still be stored, with its ID, later.
		select {
		case res = <-done:
		default:
			res.err = ctx.Err()
		}
	}
	r, err := res.r, res.err
	if err != nil {
		return adapters.Receipt{}, p.classify(m.Topic, err, p.writes.Load() != before)
	}
	part, off := r.Partition, r.Offset
	return adapters.Receipt{
		Broker: "kafka", Topic: m.Topic, ID: m.ID, Partition: &part, Offset: &off,
		Durability: publishDurability[:len(publishDurability):len(publishDurability)],
	}, nil
}

// publishDurability is every receipt's Durability, shared (read only; the full slice
// expression makes an append copy it).
var publishDurability = []string{"acks=all", "idempotent"}

// checkTopic asks the brokers once whether topic exists, before its first publish: the
// producer would otherwise wait for it through several metadata refreshes (seconds each)
// and the request would end in its timeout instead of a 404. A topic found is remembered;
// when the brokers cannot be asked, the produce decides.
func (p *Publisher) checkTopic(ctx context.Context, topic string) error {
	if _, ok := p.known.Load(topic); ok {
		return nil
	}
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = false
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	// franz-go may not give up on a connection being set up when ctx ends: do not wait for it.
	type answer struct {
		resp *kmsg.MetadataResponse
		err  error
	}
	ch := make(chan answer, 1)
	go func() { r, err := req.RequestWith(ctx, p.cl); ch <- answer{r, err} }()
	var resp *kmsg.MetadataResponse
	select {
	case a := <-ch:
		if a.err != nil {
			return nil
		}
		resp = a.resp
	case <-ctx.Done():
		return nil
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != topic {
			continue
		}
		switch err := kerr.ErrorForCode(t.ErrorCode); {
		case err == nil:
			p.known.Store(topic, struct{}{})
		case errors.Is(err, kerr.UnknownTopicOrPartition):
			return fmt.Errorf("%w: kafka topic %q does not exist", adapters.ErrUnknownTopic, topic)
		}
	}
	return nil
}

// classify maps a produce error to the publish errors; sent says whether any produce
// request was written during the publish (then the record may be stored).
func (p *Publisher) classify(topic string, err error, sent bool) error {
	var ke *kerr.Error
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("%w: kafka topic %q does not exist", adapters.ErrUnknownTopic, topic)
	case errors.Is(err, kerr.InvalidTopicException):
		return fmt.Errorf("%w: %q is not a valid Kafka topic: %w", adapters.ErrUnknownTopic, topic, err)
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge), errors.Is(err, kerr.InvalidRecord),
		errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.PolicyViolation), errors.Is(err, kerr.CorruptMessage):
		return fmt.Errorf("%w: kafka: %w", adapters.ErrRejected, err)
	case !sent && (errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, kgo.ErrRecordRetries) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, kgo.ErrClientClosed) ||
		errors.As(err, &ke) && ke.Retriable):
		reason := err
		if e := p.down.Load(); e != nil {
			reason = *e
		}
		return fmt.Errorf("%w: kafka: nothing was sent: %w", adapters.ErrUnavailable, reason)
	}
	return fmt.Errorf("%w: kafka: %w (a produce request was sent; the record may be stored)", adapters.ErrOutcomeUnknown, err)
}

// Close implements adapters.Publisher: the client is closed, failing what it still holds
// (the publish endpoint drains before, so normally nothing).
func (p *Publisher) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		close(p.stop)
		_ = p.life.StopWithin(ctx)
		p.cl.Close()
	})
	return nil
}

var _ adapters.Publisher = (*Publisher)(nil)
