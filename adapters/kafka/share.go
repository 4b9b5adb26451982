package kafka

// Share mode (source.kafka.mode: share): the Kafka adapter as a member of a share group
// (KIP-932, production-ready in Kafka 4.2). The broker hands each record to one member,
// locks it there (the acquisition lock, group.share.record.lock.duration.ms) and counts its
// deliveries; each record is acknowledged on its own: accept, release or reject. That is
// the sidecar's own model, so a fleet may have more replicas than the topic has partitions,
// and one slow record holds no partition.
//
// Translation (the guarantees stay in the ack gate): Settle(nil) accepts the record;
// Settle(any error) releases it, so the broker delivers it again (to any member) with its
// delivery count raised. The count feeds Delivery.DeliveryCount and Redelivered
// (ce-deliveryattempt, ce-redelivered).
//
// Ack only after 2xx: franz-go accepts every record of the previous poll that has no
// acknowledgement yet when the next poll is made. ShareSource therefore polls again only
// when every record of the previous poll was settled (and so acknowledged explicitly); a
// record it can no longer hand out (fenced before Read reached it, or Close) is released.
// Nothing is ever accepted that the gate did not settle with nil.
//
// Bounded: one poll returns at most max_inflight records (ShareMaxRecords, strict), and
// the next poll waits for all of them; the client fetches at most one more batch of that
// size per broker ahead, so at most 2 × max_inflight records per broker are acquired.
//
// Fenced: a record whose lock is about to expire (the broker then hands it to another
// member) is fenced (Delivery.Fenced closes) like a revoked partition in group mode, and so
// are the unsettled records of a partition whose acknowledgements or renewals the broker
// refused (the member was fenced out of the group, the session reset, the leader moved). While the gate still
// works on a record (retries with backoff), the adapter renews its lock (AckRenew, KIP-1222,
// Kafka 4.2+) every third of the lock's duration; where renewal fails, the refusal fences
// it.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// WithMaxInflight bounds a share-mode source's poll to n records (delivery.max_inflight).
// Group mode ignores it.
func WithMaxInflight(n int) Option { return func(s *Source) { s.maxInflight = n } }

// shareRec is one acquired record of the current poll.
type shareRec struct {
	r        *kgo.Record
	d        *adapters.Delivery
	fenced   chan struct{}
	isFenced bool
	handed   bool          // returned by Read
	settled  bool          // acknowledged (accept or release)
	lockFor  time.Duration // the lock's duration as the broker granted it at the poll
	deadline time.Time     // when the broker's lock expires, as far as this member knows
	renewAt  time.Time     // next renewal
}

// ShareSource is the Kafka adapter in share mode. Create it with NewShare.
type ShareSource struct {
	cfg         Settings
	dlq         string
	log         *slog.Logger
	ev          adapters.Events
	cl          *kgo.Client
	maxInflight int
	mu          sync.Mutex
	// noRenew (tests) leaves locks unrenewed, as on a broker without KIP-1222.
	noRenew bool
	// ackWith (tests) sees each acknowledgement instead of the client; nil = the record's Ack.
	ackWith func(*kgo.Record, kgo.AckStatus)
	batch   []*shareRec
	next    int           // batch[next] is the next record to hand out
	open    int           // records of batch not yet settled
	idle    chan struct{} // closed when open drops to 0; replaced at each poll
	closed  bool
	// resetDone: share.auto.offset.reset was set for the group (see setReset).
	resetDone bool

	ready     atomic.Pointer[error]
	fetchErr  bool
	stop      chan struct{}
	life      lifecycle.Loop
	closeOnce sync.Once
	closeErr  error
}

// lockMargin is how long before its lock expires an unrenewed record is fenced: the ack
// must reach the broker before the deadline, and the deadline is computed at the broker
// before the fetch response travels.
func lockMargin(lock time.Duration) time.Duration { return max(lock/6, 500*time.Millisecond) }

// NewShare creates a share-group consumer (source.kafka.mode: share); like New, it
// contacts no broker and starts no goroutine of its own before Run.
func NewShare(cfg Settings, deadLetterTopic string, opts ...Option) (*ShareSource, error) {
	var ck settings.Checker
	if cfg.Check(&ck, deadLetterTopic); len(ck.Problems) > 0 {
		return nil, ck.Err("kafka")
	}
	if cfg.Mode != ModeShare {
		return nil, fmt.Errorf("kafka: NewShare needs source.kafka.mode: share, got %q", cfg.Mode)
	}
	var o Source
	for _, opt := range opts {
		opt(&o)
	}
	s := &ShareSource{cfg: cfg, dlq: deadLetterTopic, log: o.log, ev: o.ev, maxInflight: o.maxInflight, stop: make(chan struct{}), idle: make(chan struct{})}
	close(s.idle)
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.ev == nil {
		s.ev = adapters.NoEvents{}
	}
	if s.maxInflight <= 0 {
		s.maxInflight = 64
	}
	s.log = s.log.With("source", "kafka", "mode", "share")
	s.setReady(errors.New("kafka: not connected yet"))

	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.ShareGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.ShareMaxRecords(int32(min(s.maxInflight, 1<<20))), //nolint:gosec // bounded above
		kgo.ShareMaxRecordsStrict(),
		kgo.ShareAckCallback(s.acked),
		kgo.FetchMaxBytes(256 << 10),
		kgo.FetchMaxPartitionBytes(64 << 10),
		kgo.WithLogger(kgoLogger{s.log}),
	}
	cl, err := newClient(cfg, kopts, o.extra)
	if err != nil {
		return nil, err
	}
	s.cl = cl
	return s, nil
}

// Run renews the locks of the records the gate still works on, fences those it cannot keep,
// and pings the brokers every 5 s (Ready), until Close; cancelling ctx closes the source.
func (s *ShareSource) Run(ctx context.Context) error {
	return s.life.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, s.Close), func() error {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		s.ping()
		last := time.Now()
		for {
			select {
			case <-s.stop:
				return nil
			case now := <-tick.C:
				s.keepLocks(now)
				if now.Sub(last) >= 5*time.Second {
					s.ping()
					last = now
				}
			}
		}
	})
}

func (s *ShareSource) ping() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.cl.Ping(ctx); err != nil {
		s.setReady(fmt.Errorf("kafka: %w", err))
		return
	}
	s.setReady(nil)
}

// keepLocks renews the lock of every unsettled record due for it and fences every record
// whose lock is about to expire unrenewed.
func (s *ShareSource) keepLocks(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sr := range s.batch {
		if sr.settled || sr.isFenced {
			continue
		}
		if !now.Before(sr.deadline.Add(-lockMargin(sr.lockFor))) {
			s.fenceLocked(sr, "acquisition lock expires")
			continue
		}
		if !s.noRenew && !now.Before(sr.renewAt) {
			// The broker extends the lock by its full duration; a refusal arrives in acked
			// and fences the record.
			sr.r.Ack(kgo.AckRenew)
			sr.deadline = now.Add(sr.lockFor)
			sr.renewAt = now.Add(sr.lockFor / 3)
		}
	}
}

// fenceLocked fences sr; a record not handed out yet is released at once (the gate never
// saw it). Called with mu held.
func (s *ShareSource) fenceLocked(sr *shareRec, why string) {
	sr.isFenced = true
	close(sr.fenced)
	s.log.Warn("record fenced: the broker may hand it to another member", "why", why, "topic", sr.r.Topic, "partition", sr.r.Partition, "offset", sr.r.Offset, "handed_out", sr.handed)
	if !sr.handed {
		s.settleLocked(sr, adapters.ErrNotDone)
	}
}

// acked receives the broker's answers to acknowledgements and renewals: a partition whose
// answer is an error fences its unsettled records (their locks may be gone).
func (s *ShareSource) acked(_ *kgo.Client, results kgo.ShareAckResults) {
	for _, res := range results {
		if res.Err == nil {
			continue
		}
		s.ev.Error("kafka_share_ack")
		s.log.Warn("share acknowledgement refused", "topic", res.Topic, "partition", res.Partition, "error", res.Err)
		s.mu.Lock()
		for _, sr := range s.batch {
			if !sr.settled && !sr.isFenced && sr.r.Topic == res.Topic && sr.r.Partition == res.Partition {
				s.fenceLocked(sr, "acknowledgement refused: "+res.Err.Error())
			}
		}
		s.mu.Unlock()
	}
}

// Read implements adapters.Source: it hands out the current poll's records, and polls again
// only once every one of them was settled.
func (s *ShareSource) Read(ctx context.Context) (*adapters.Delivery, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("kafka: %w", adapters.ErrClosed)
		}
		for s.next < len(s.batch) {
			sr := s.batch[s.next]
			s.next++
			if sr.settled { // fenced before it was handed out, and released
				continue
			}
			sr.handed = true
			s.mu.Unlock()
			return sr.d, nil
		}
		idle := s.idle
		s.mu.Unlock()
		// Every record of the last poll must have its outcome before the next poll, which
		// accepts whatever has none.
		select {
		case <-idle:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.stop:
			return nil, fmt.Errorf("kafka: %w", adapters.ErrClosed)
		}
		if err := s.setReset(ctx); err != nil {
			return nil, err
		}
		if err := s.poll(ctx); err != nil {
			return nil, err
		}
	}
}

// setReset sets the group's share.auto.offset.reset from start_offset before the first
// poll: a new share group starts at the end of the topic (latest) unless told otherwise.
// A broker that refuses (no ALTER_CONFIGS on the group) leaves whatever an operator set;
// the refusal is logged once.
func (s *ShareSource) setReset(ctx context.Context) error {
	s.mu.Lock()
	done := s.resetDone
	s.mu.Unlock()
	if done {
		return nil
	}
	for attempt := 1; ; attempt++ {
		err := s.alterReset(ctx)
		if err == nil || errors.Is(err, kerr.GroupAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) || errors.Is(err, kerr.InvalidConfig) || errors.Is(err, kerr.InvalidRequest) {
			if err != nil {
				s.log.Warn("could not set the share group's share.auto.offset.reset; the group's own setting applies", "group", s.cfg.Group, "want", s.cfg.StartOffset, "error", err)
			}
			s.mu.Lock()
			s.resetDone = true
			s.mu.Unlock()
			return nil
		}
		s.setReady(fmt.Errorf("kafka: set share.auto.offset.reset: %w", err))
		t := time.NewTimer(min(time.Duration(attempt)*200*time.Millisecond, 5*time.Second))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-s.stop:
			t.Stop()
			return fmt.Errorf("kafka: %w", adapters.ErrClosed)
		}
	}
}

func (s *ShareSource) alterReset(ctx context.Context) error {
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	res := kmsg.NewIncrementalAlterConfigsRequestResource()
	res.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	res.ResourceName = s.cfg.Group
	c := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	c.Name = "share.auto.offset.reset"
	c.Op = kmsg.IncrementalAlterConfigOpSet
	v := s.cfg.StartOffset
	c.Value = &v
	res.Configs = append(res.Configs, c)
	req.Resources = append(req.Resources, res)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(rctx, s.cl)
	if err != nil {
		return err
	}
	for _, r := range resp.Resources {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			if r.ErrorMessage != nil {
				return fmt.Errorf("%w: %s", err, *r.ErrorMessage)
			}
			return err
		}
	}
	return nil
}

// poll fetches the next batch (at most max_inflight records). Called only when every
// record of the previous batch is settled.
func (s *ShareSource) poll(ctx context.Context) error {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-pctx.Done():
		}
	}()
	fetches := s.cl.PollRecords(pctx, s.maxInflight)
	// Whatever the poll returned is kept even when ctx ended meanwhile: a record dropped here
	// would be accepted by the next poll.
	failed := false
	fetches.EachError(func(topic string, p int32, err error) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return
		}
		failed = true
		s.ev.Error("kafka_fetch")
		s.log.Warn("share fetch failed", "topic", topic, "partition", p, "error", err)
		s.setReady(fmt.Errorf("kafka: fetch %s/%d: %w", topic, p, err))
	})
	if !failed && fetches.NumRecords() > 0 {
		s.setReady(nil)
	}
	now := time.Now()
	var batch []*shareRec
	fetches.EachRecord(func(r *kgo.Record) {
		sr := &shareRec{r: r, fenced: make(chan struct{})}
		sr.deadline = r.AcquisitionDeadline()
		sr.lockFor = sr.deadline.Sub(now)
		if sr.deadline.IsZero() || sr.lockFor <= 0 {
			sr.lockFor = 30 * time.Second // the broker's default; never seen in practice
			sr.deadline = now.Add(sr.lockFor)
		}
		sr.renewAt = now.Add(sr.lockFor / 3)
		d := &adapters.Delivery{
			Payload:        r.Value,
			Source:         "kafka://" + r.Topic,
			Time:           r.Timestamp,
			Key:            string(r.Key),
			HasCoordinates: true,
			Partition:      r.Partition,
			Offset:         r.Offset,
			Fenced:         sr.fenced,
		}
		if n := int(r.DeliveryCount()); n > 1 {
			d.DeliveryCount = n - 1
			d.Redelivered = true
		}
		d.Headers, d.ContentType = convertHeaders(r)
		d.ID = messageID(s.cfg.MessageID, r, d)
		d.Ack = func(err error) { s.settled(sr, err) }
		sr.d = d
		batch = append(batch, sr)
	})
	s.mu.Lock()
	s.batch, s.next, s.open = batch, 0, len(batch)
	s.idle = make(chan struct{})
	if s.open == 0 {
		close(s.idle)
	}
	closed := s.closed
	s.mu.Unlock()
	switch {
	case closed || fetches.IsClientClosed():
		// The client releases what it returned and nobody accepted.
		return fmt.Errorf("kafka: %w", adapters.ErrClosed)
	case len(batch) == 0 && ctx.Err() != nil:
		return ctx.Err()
	}
	return nil
}

// settled translates the gate's decision: nil accepts (rejects when the gate dropped the
// message: the broker archives it as unprocessable), anything else releases.
func (s *ShareSource) settled(sr *shareRec, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settleLocked(sr, err)
}

func (s *ShareSource) settleLocked(sr *shareRec, err error) {
	if sr.settled {
		return
	}
	sr.settled = true
	if !s.closed {
		switch {
		case err == nil && sr.d.Dropped():
			s.ack(sr.r, kgo.AckReject)
		case err == nil:
			s.ack(sr.r, kgo.AckAccept)
		default:
			s.ack(sr.r, kgo.AckRelease)
		}
	}
	s.open--
	if s.open == 0 {
		close(s.idle)
	}
}

func (s *ShareSource) ack(r *kgo.Record, status kgo.AckStatus) {
	if s.ackWith != nil {
		s.ackWith(r, status)
		return
	}
	r.Ack(status)
}

func (s *ShareSource) setReady(err error) { s.ready.Store(&err) }

// Ready implements adapters.Source.
func (s *ShareSource) Ready() error { return *s.ready.Load() }

// DeadLetter implements adapters.Source, as in group mode; a fenced record (its lock is
// gone) is refused as stale.
func (s *ShareSource) DeadLetter(ctx context.Context, d *adapters.Delivery, f adapters.Failure) error {
	if s.dlq == "" {
		return adapters.ErrNoDeadLetter
	}
	if d.IsFenced() {
		return fmt.Errorf("kafka: dead-letter %s/%d@%d: acquisition lock lost: %w", strings.TrimPrefix(d.Source, "kafka://"), d.Partition, d.Offset, adapters.ErrStaleDelivery)
	}
	return produceDeadLetter(ctx, s.cl, s.dlq, d, f)
}

// Close implements adapters.Source: it flushes the acknowledgements made so far and leaves
// the share group; the client releases every record not acknowledged, so the broker hands
// it out again at once.
func (s *ShareSource) Close(ctx context.Context) error {
	err := adapters.ErrClosed
	s.closeOnce.Do(func() {
		err = nil
		close(s.stop)
		s.life.Stop(nil)
		fctx, cancel := context.WithTimeout(ctx, leaveWait)
		if ferr := s.cl.FlushAcks(fctx); ferr != nil {
			s.log.Warn("not every acknowledgement was confirmed before close", "error", ferr)
		}
		cancel()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		done := make(chan struct{})
		go func() { s.cl.Close(); close(done) }()
		t := time.NewTimer(leaveWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			s.log.Warn("stopped without waiting to leave the share group", "waited", leaveWait)
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("kafka: close: %w", ctx.Err())
		}
		s.setReady(fmt.Errorf("kafka: %w", adapters.ErrClosed))
		s.log.Info("kafka source closed")
	})
	if err != nil {
		return err
	}
	return s.closeErr
}

// kill abandons the source as kill -9 would: nothing more is acknowledged, the connections
// are cut; the broker hands the records out again when their locks expire. For tests.
func (s *ShareSource) kill() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.closeOnce.Do(func() {
		close(s.stop)
		s.life.Stop(nil)
		s.cl.Close()
		s.setReady(fmt.Errorf("kafka: %w", adapters.ErrClosed))
	})
}
