// Package kafka is the Kafka adapter (franz-go): a consumer-group member that hands records
// to the ack gate and commits only what the gate settled as done.
//
// Commit contract: for each partition the adapter remembers the offsets it handed out, in
// order. An offset is committed only when it and every offset handed out before it in that
// partition were settled with nil (the contiguous completed prefix). Commits happen every
// commit_interval, on revoke (after waiting briefly for in-flight records of the revoked
// partitions), and on Close.
//
// Fencing: each assignment of a partition gets its own state. When a revoke begins, the
// partition's deliveries are fenced at once (Delivery.Fenced closes): nothing more of it is
// handed out, and the ack gate abandons what it had queued or parked and lets pushes on the
// wire finish. The revoke then waits for those (bounded by revokeWait), commits the
// completed prefix — retried until the wait's deadline — and drops the state. A lost
// partition is fenced and dropped without a commit. Settlements of records handed out under
// a dropped state are ignored, so a late completion never commits an offset for a partition
// this member no longer owns.
//
// Never silent across owners: the ack gate's store is per replica (unless shared), and
// Kafka has no redelivered flag, so every commit carries, in its metadata, the partition's
// reserved high-water mark ("mqsidecar:hw=N"): no record at or above N has been handed to
// the gate by any owner. A record at or above the mark is handed out only after a commit
// that raised the mark past it was acknowledged (the mark is raised ahead in steps of
// reserveStep, in the background, so Read rarely waits for it). A new owner reads the mark
// when it is assigned the partition (OnOffsetsFetched) and flags every record below it
// Redelivered (ce-redelivered: true): after a kill -9, a rebalance or a rolling restart
// with an empty store, a message the previous owner may have pushed is never pushed
// unflagged. Records above the mark were never pushed, so they go out unflagged.
//
// Rebalances are blocked from a poll until its records are buffered (BlockRebalanceOnPoll +
// AllowRebalance right after), so buffered records always belong to the current assignment.
// Read interleaves buffered records of different partitions round-robin, so one partition's
// large fetch does not starve the others' lanes in the gate. A partition with enough
// buffered (see bufferTarget and WithMaxBufferBytes) is paused at the client until it
// drains, nothing more is fetched while the buffer holds its byte budget, and while every
// buffered partition is held back by the gate, Read keeps fetching for the partitions that
// have nothing buffered: a backlog on some partitions never idles the lanes of the others,
// and the buffer stays bounded.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
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

// lowWater is the number of buffered records below which Read tops up from the client's
// own buffer, without blocking.
const lowWater = 1024

// bufferTarget bounds the records buffered ahead of the gate across all partitions: a
// partition holding perPartitionBuffer records is paused at the client (no more fetches for
// it) until it drains to half of that. Without the pause, a backlog larger than one fetch
// fills the buffer with the few partitions the first fetches returned, and the lanes of all
// the others idle until those drain.
const bufferTarget = 2048

func perPartitionBuffer(partitions int) int { return max(64, bufferTarget/max(1, partitions)) }

// defaultMaxBufferBytes is the byte budget of the buffer when WithMaxBufferBytes is not
// used: half of delivery.max_buffer_bytes's default.
const defaultMaxBufferBytes = 32 << 20

// perPartitionBytes is a partition's share of the byte budget: a partition holding it is
// paused at the client like one holding perPartitionBuffer records.
func (s *Source) perPartitionBytes() int64 { return max(1, s.maxBytes/int64(max(1, len(s.parts)))) }

// recordSize is what a buffered record holds in memory, as adapters.Delivery.Size counts it.
func recordSize(r *kgo.Record) int64 {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return int64(n)
}

// revokeWait bounds how long a revoke waits for in-flight records of the revoked partitions
// to settle and for their commit to succeed; it must stay well inside the group's rebalance
// timeout.
const revokeWait = 5 * time.Second

// leaveWait bounds how long Close waits to leave the group (see Close): as long as another
// member may spend in its revoke, so an ordinary rebalance still completes.
const leaveWait = revokeWait

// reserveStep is how far ahead of the records handed out the high-water mark is reserved
// (see the package doc). A larger step means fewer reservation commits and, after a
// kill -9, more never-pushed records flagged as redelivered (harmless, but noise).
const reserveStep = 1024

// hwPrefix starts the commit metadata that carries the reserved high-water mark.
const hwPrefix = "mqsidecar:hw="

// Option configures a Source.
type Option func(*Source)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Source) { s.log = l } }

// WithEvents sets where the adapter reports readiness, consumer lag and errors (default
// adapters.NoEvents).
func WithEvents(e adapters.Events) Option { return func(s *Source) { s.ev = e } }

// WithMaxBufferBytes bounds the bytes of the records buffered ahead of the gate (G4; the
// adapter's half of delivery.max_buffer_bytes): nothing more is fetched while the buffer
// holds n bytes, and a partition holding its share (n / partitions) is paused at the
// client. What comes on top is one fetch response per broker (FetchMaxBytes, or one
// record batch larger than that) and a record larger than the share, alone.
func WithMaxBufferBytes(n int64) Option { return func(s *Source) { s.maxBytes = n } }

// WithClientOptions appends raw franz-go options (tests: shorter session timeouts).
func WithClientOptions(opts ...kgo.Opt) Option {
	return func(s *Source) { s.extra = append(s.extra, opts...) }
}

type topicPartition struct {
	topic     string
	partition int32
}

// pending is one handed-out record awaiting settlement.
type pending struct {
	offset  int64
	epoch   int32
	done    bool // settled with nil
	settled bool // settled either way
}

// partState is one assignment of one partition. Guarded by Source.mu.
type partState struct {
	tp       topicPartition
	lane     string        // "topic/partition", the Delivery.Lane
	source   string        // "kafka://topic", the Delivery.Source
	buffered []*kgo.Record // polled, not yet handed out
	bufBytes int64         // recordSize of buffered
	inRR     bool          // listed in Source.rr
	pending  []pending     // handed out, in offset order; pending[0] has sequence headSeq
	headSeq  uint64
	nextSeq  uint64
	commit   kgo.EpochOffset // next offset to commit (contiguous done prefix), Offset -1 = none yet
	dirty    bool            // commit advanced since the last successful commit
	hwm      int64
	paused   bool // fetching paused at the client: enough buffered

	// fenced closes when a revoke begins or the partition is lost (Delivery.Fenced).
	fenced       chan struct{}
	fencedClosed bool
	// base is the first offset buffered under this assignment, -1 until then: the offset
	// a reservation commits when nothing has completed yet.
	base int64
	// reserved is the durable high-water mark: records below it may be handed out.
	// inherited is the mark the previous owners left: records below it are flagged
	// Redelivered. Both -1 when none.
	reserved, inherited int64
	// reserving asks the next commit to raise the mark reserveStep past the next record
	// to hand out (see commit).
	reserving bool
	handedOut int64 // offset of the last record handed out, -1 none
}

// fence closes ps.fenced once. Called with Source.mu held.
func (ps *partState) fence() {
	if !ps.fencedClosed {
		ps.fencedClosed = true
		close(ps.fenced)
	}
}

// Source is the Kafka adapter. Create it with New.
type Source struct {
	cfg   Settings
	dlq   string
	log   *slog.Logger
	ev    adapters.Events
	extra []kgo.Opt
	cl    *kgo.Client

	mu       sync.Mutex
	parts    map[topicPartition]*partState
	rr       []*partState // partitions with buffered records, served round-robin
	rrPos    int
	buffered int   // records in all partStates' buffers
	bufBytes int64 // their bytes (recordSize), bounded by maxBytes
	maxBytes int64 // WithMaxBufferBytes
	// maxInflight is WithMaxInflight, for NewShare.
	maxInflight int
	// pause and resume collect partitions whose fetching must be paused (by buffer) or
	// resumed (by next) at the client, outside mu.
	pause, resume map[string][]int32
	// lastLag is the lag reportLag published last.
	lastLag map[string]int64

	// laneFull (LaneLimiter) holds back partitions the gate has enough of; wake unblocks
	// a Read waiting for one of them.
	laneFull func(lane string) bool
	wake     chan struct{}
	// kick asks the loop to commit now: a partition needs its high-water mark raised.
	kick chan struct{}

	// closing skips the revoke wait: at Close the gate has drained, so nothing unsettled
	// will settle any more.
	closing   atomic.Bool
	ready     atomic.Pointer[error]
	fetchErr  atomic.Bool  // a fetch error was logged and not yet followed by success
	polls     atomic.Int64 // pollUntilWake calls (tests: no busy loop while lanes are held)
	stop      chan struct{}
	life      lifecycle.Loop // Run: commits, pings, lag
	closeOnce sync.Once
	closeErr  error
}

// New creates the consumer; Run commits and checks the brokers. It does not wait for the
// brokers: a broker that is down at start is retried by the client while Ready reports the
// problem. The adapter starts no goroutine of its own before Run (franz-go's client keeps
// its own from here on, until Close).
func New(cfg Settings, deadLetterTopic string, opts ...Option) (*Source, error) {
	var ck settings.Checker
	if cfg.Check(&ck, deadLetterTopic); len(ck.Problems) > 0 {
		return nil, ck.Err("kafka")
	}
	s := &Source{
		cfg: cfg, dlq: deadLetterTopic, log: slog.Default(),
		parts: map[topicPartition]*partState{},
		stop:  make(chan struct{}),
		wake:  make(chan struct{}, 1), kick: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(s)
	}
	if s.maxBytes <= 0 {
		s.maxBytes = defaultMaxBufferBytes
	}
	if s.ev == nil {
		s.ev = adapters.NoEvents{}
	}
	s.log = s.log.With("source", "kafka")
	notReady := errors.New("kafka: not connected yet")
	s.ready.Store(&notReady)

	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.ConsumerGroup(cfg.Group),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.HeartbeatInterval(min(3*time.Second, cfg.SessionTimeout/3)),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
		kgo.OnOffsetsFetched(s.fetched),
		// Bound what the client buffers ahead of the gate (G4): one fetch response is
		// thousands of small records, far more than max_inflight needs to stay busy.
		// These bound compressed bytes; records decompress to several times that.
		kgo.FetchMaxBytes(256 << 10),
		kgo.FetchMaxPartitionBytes(64 << 10),
		// A partition resumed after a pause (see bufferTarget) is fetched only once the
		// fetch in flight returns, which waits up to this long when the other partitions
		// have nothing new; the client's 5 s default would idle a busy lane for seconds.
		// 500 ms is the Java consumer's fetch.max.wait.ms.
		kgo.FetchMaxWait(500 * time.Millisecond),
		kgo.WithLogger(kgoLogger{s.log}),
	}
	if cfg.StartOffset == "latest" {
		kopts = append(kopts, kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))
	} else {
		kopts = append(kopts, kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	}
	if cfg.GroupInstanceID != "" {
		kopts = append(kopts, kgo.InstanceID(cfg.GroupInstanceID))
	}
	cl, err := newClient(cfg, kopts, s.extra)
	if err != nil {
		return nil, err
	}
	s.cl = cl
	return s, nil
}

// newClient creates the franz-go client of either mode: kopts (the mode's consumer
// options) with the brokers' SASL and TLS settings, the dead-letter producer's options and
// then extra (WithClientOptions).
func newClient(cfg Settings, kopts, extra []kgo.Opt) (*kgo.Client, error) {
	mech, err := saslMechanism(cfg.SASL.Mechanism, cfg.SASL.Username, cfg.SASL.Password.Reveal())
	if err != nil {
		return nil, err
	}
	if mech != nil {
		kopts = append(kopts, kgo.SASL(mech))
	}
	kopts = append(kopts, producerOpts...)
	tlsCfg, err := cfg.TLS.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	if tlsCfg != nil {
		kopts = append(kopts, kgo.DialTLSConfig(tlsCfg))
	}
	kopts = append(kopts, extra...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: create client: %w", err)
	}
	return cl, nil
}

// Run commits the completed prefixes every commit_interval and when Read needs a higher
// reserved mark, pings the brokers every 5 s (Ready) and reports the consumer lag, until
// Close; cancelling ctx closes the source (Close, within adapters.CloseWait). It returns nil; it
// runs at most once.
func (s *Source) Run(ctx context.Context) error {
	return s.life.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, s.Close), func() error { s.loop(); return nil })
}

// Read implements adapters.Source.
func (s *Source) Read(ctx context.Context) (*adapters.Delivery, error) {
	for {
		s.mu.Lock()
		// Low, or some partition has nothing buffered; and within the byte budget.
		low := (s.buffered < lowWater || len(s.rr) < len(s.parts)) && s.bufBytes < s.maxBytes
		s.mu.Unlock()
		if low {
			// Top up from what the client already fetched (a nil context never blocks),
			// so lanes do not idle while the last partitions of a fetch drain.
			s.buffer(s.cl.PollFetches(nil)) //nolint:staticcheck // nil ctx = non-blocking, documented by kgo
			s.cl.AllowRebalance()
		}
		d, held, starved, resume := s.next()
		if len(resume) > 0 {
			// A stale resume (of a partition revoked meanwhile) is harmless: assigned
			// resumes every partition anyway.
			s.cl.ResumeFetchPartitions(resume)
		}
		if d != nil {
			return d, nil
		}
		if held && starved {
			// Records are buffered, but only for partitions at their look-ahead limit,
			// and others have none: fetch for those until a lane frees up.
			fetches := s.pollUntilWake(ctx)
			if fetches.IsClientClosed() {
				return nil, adapters.ErrClosed
			}
			s.buffer(fetches)
			s.cl.AllowRebalance()
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			continue
		}
		if held {
			// Records are buffered, but only for partitions at their look-ahead limit:
			// wait for one to drain instead of fetching more.
			select {
			case <-s.wake:
				continue
			case <-s.stop:
				return nil, adapters.ErrClosed
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		select {
		case <-s.stop:
			return nil, adapters.ErrClosed
		default:
		}
		// The whole buffered fetch, not a capped number of records: a cap would return one
		// partition's records only and leave the gate a single busy lane.
		fetches := s.cl.PollFetches(ctx)
		if fetches.IsClientClosed() {
			return nil, adapters.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			s.cl.AllowRebalance()
			return nil, err
		}
		s.buffer(fetches)
		s.cl.AllowRebalance()
	}
}

// pollUntilWake polls the client until records arrive, a lane is freed (LaneFreed), or ctx
// ends. A wake it consumes is not passed on: Read looks at every lane again (next) before
// it waits again, so the freed lane is seen; passing the wake on made every later poll
// return at once, a busy loop for as long as all lanes stayed held.
func (s *Source) pollUntilWake(ctx context.Context) kgo.Fetches {
	s.polls.Add(1)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	polled := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-s.wake:
			cancel()
		case <-polled:
		}
	}()
	fetches := s.cl.PollFetches(pctx)
	close(polled)
	<-done
	return fetches
}

// notePause records that ps must be paused (or resumed) at the client. Called with mu held.
func (s *Source) notePause(ps *partState, pause bool) {
	ps.paused = pause
	m := &s.resume
	if pause {
		m = &s.pause
	}
	if *m == nil {
		*m = map[string][]int32{}
	}
	(*m)[ps.tp.topic] = append((*m)[ps.tp.topic], ps.tp.partition)
}

// buffer stores polled records in their partition's current state. Rebalances are blocked
// while it runs, so every record belongs to the current assignment.
func (s *Source) buffer(fetches kgo.Fetches) {
	var fetchErr error
	s.mu.Lock()
	defer func() {
		pause := s.pause
		s.pause = nil
		s.mu.Unlock()
		// Paused before AllowRebalance, so the pause can only concern the current
		// assignment: a stale one could stop a reassigned partition for good.
		if len(pause) > 0 {
			s.cl.PauseFetchPartitions(pause)
		}
	}()
	fetches.EachTopic(func(t kgo.FetchTopic) {
		for i := range t.Partitions {
			p := &t.Partitions[i]
			if p.Err != nil {
				if !errors.Is(p.Err, context.Canceled) {
					fetchErr = fmt.Errorf("kafka: fetch %s/%d: %w", t.Topic, p.Partition, p.Err)
				}
				continue
			}
			ps := s.parts[topicPartition{t.Topic, p.Partition}]
			if ps == nil {
				continue // not ours (revoked before the poll returned)
			}
			ps.hwm = p.HighWatermark
			if len(p.Records) == 0 {
				continue
			}
			if ps.base < 0 {
				ps.base = p.Records[0].Offset
			}
			bufBytesBefore := ps.bufBytes
			ps.buffered = append(ps.buffered, p.Records...)
			s.buffered += len(p.Records)
			for _, r := range p.Records {
				ps.bufBytes += recordSize(r)
			}
			s.bufBytes += ps.bufBytes - bufBytesBefore
			if !ps.paused && (len(ps.buffered) >= perPartitionBuffer(len(s.parts)) || ps.bufBytes >= s.perPartitionBytes()) {
				s.notePause(ps, true)
			}
			if !ps.inRR {
				ps.inRR = true
				s.rr = append(s.rr, ps)
			}
		}
	})
	if fetchErr != nil {
		s.ev.Error(adapters.ErrorBroker)
		if !s.fetchErr.Swap(true) {
			s.log.Warn("fetch failing; the client keeps retrying", "error", fetchErr)
		}
	} else if s.fetchErr.Swap(false) {
		s.log.Info("fetch recovered")
	}
}

// LimitLanes implements adapters.LaneLimiter.
func (s *Source) LimitLanes(full func(lane string) bool) {
	s.mu.Lock()
	s.laneFull = full
	s.mu.Unlock()
}

// LaneFreed implements adapters.LaneLimiter.
func (s *Source) LaneFreed() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next hands out the next buffered record, round-robin across partitions, skipping those
// at their look-ahead limit. held reports that records are buffered but all held back, and
// starved then that some partition has nothing buffered (next has dropped drained ones
// from rr by then). resume lists the partitions to resume at the client (see notePause).
func (s *Source) next() (d *adapters.Delivery, held, starved bool, resume map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() { resume, s.resume = s.resume, nil }()
	skipped := 0
	for len(s.rr) > 0 && skipped < len(s.rr) {
		if s.rrPos >= len(s.rr) {
			s.rrPos = 0
		}
		ps := s.rr[s.rrPos]
		if s.parts[ps.tp] != ps || ps.fencedClosed || len(ps.buffered) == 0 {
			ps.inRR = false
			s.buffered -= len(ps.buffered)
			s.bufBytes -= ps.bufBytes
			ps.buffered, ps.bufBytes = nil, 0
			s.rr = append(s.rr[:s.rrPos], s.rr[s.rrPos+1:]...)
			continue
		}
		if (s.laneFull != nil && s.laneFull(ps.lane)) || !s.reservedFor(ps, ps.buffered[0].Offset) {
			s.rrPos++
			skipped++
			continue
		}
		r := ps.buffered[0]
		ps.buffered[0] = nil
		ps.buffered = ps.buffered[1:]
		s.buffered--
		size := recordSize(r)
		ps.bufBytes -= size
		s.bufBytes -= size
		if ps.paused && len(ps.buffered) <= perPartitionBuffer(len(s.parts))/2 && ps.bufBytes <= s.perPartitionBytes()/2 {
			s.notePause(ps, false)
		}
		s.rrPos++
		seq := ps.nextSeq
		ps.nextSeq++
		ps.pending = append(ps.pending, pending{offset: r.Offset, epoch: r.LeaderEpoch})
		ps.handedOut = r.Offset
		d := s.delivery(r, ps)
		d.Redelivered = r.Offset < ps.inherited
		d.Fenced = ps.fenced
		d.Ack = func(err error) { s.settled(ps, seq, err) }
		return d, false, false, nil
	}
	// Starved only within the byte budget: beyond it, fetching waits for a lane to drain.
	return nil, len(s.rr) > 0, len(s.rr) < len(s.parts) && s.bufBytes < s.maxBytes, nil
}

// reservedFor reports whether the record at offset may be handed out: it lies below the
// durable high-water mark. When it does not, or will not for long, it asks the loop to
// raise the mark (LaneFreed wakes Read once that commit is acknowledged). Called with mu
// held.
func (s *Source) reservedFor(ps *partState, offset int64) bool {
	if offset+reserveStep/2 >= ps.reserved && !ps.reserving {
		ps.reserving = true
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return offset < ps.reserved
}

// delivery makes the Delivery of r, a record of ps. Strings the record's fields share are
// converted once (every message pays for each allocation, and for the collections they
// cause): the source per partition, and the ID is the very string of its header's value,
// or of the key.
func (s *Source) delivery(r *kgo.Record, ps *partState) *adapters.Delivery {
	d := &adapters.Delivery{
		Payload:        r.Value,
		Source:         ps.source,
		Time:           r.Timestamp,
		Key:            string(r.Key),
		Lane:           ps.lane,
		HasCoordinates: true,
		Partition:      r.Partition,
		Offset:         r.Offset,
	}
	d.Headers, d.ContentType = convertHeaders(r)
	d.ID = messageID(s.cfg.MessageID, r, d)
	return d
}

// convertHeaders returns r's headers as the Delivery carries them, each value converted
// once, and the value of the (last) content-type header.
func convertHeaders(r *kgo.Record) (hs []adapters.Header, contentType string) {
	if len(r.Headers) == 0 {
		return nil, ""
	}
	hs = make([]adapters.Header, 0, len(r.Headers))
	for _, h := range r.Headers {
		v := string(h.Value)
		hs = append(hs, adapters.Header{Key: h.Key, Value: v})
		if strings.EqualFold(h.Key, "content-type") {
			contentType = v
		}
	}
	return hs, contentType
}

// messageID applies the configured rule to d, the Delivery of r (its Key and Headers
// already converted: the ID shares their strings), falling back to the record's
// coordinates (which still dedup redeliveries, though not producer duplicates).
func messageID(rule string, r *kgo.Record, d *adapters.Delivery) string {
	switch {
	case rule == "key":
		if d.Key != "" {
			return d.Key
		}
	case strings.HasPrefix(rule, "header:"):
		name := strings.TrimPrefix(rule, "header:")
		for _, h := range d.Headers {
			if h.Key == name && h.Value != "" {
				return h.Value
			}
		}
	}
	return r.Topic + "/" + strconv.FormatInt(int64(r.Partition), 10) + "/" + strconv.FormatInt(r.Offset, 10)
}

// settled records the gate's decision for record seq of ps.
func (s *Source) settled(ps *partState, seq uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parts[ps.tp] != ps {
		return // fenced: the partition was revoked or lost since this record was handed out
	}
	p := &ps.pending[seq-ps.headSeq]
	p.settled = true
	if err != nil {
		return // not done: the offset stays uncommitted and is redelivered after a restart
	}
	p.done = true
	n := 0
	for n < len(ps.pending) && ps.pending[n].done {
		n++
	}
	if n == 0 {
		return
	}
	last := ps.pending[n-1]
	ps.commit = kgo.EpochOffset{Epoch: last.epoch, Offset: last.offset + 1}
	ps.dirty = true
	ps.pending = ps.pending[n:]
	ps.headSeq += uint64(n)
}

func (s *Source) assigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	// Paused under an earlier assignment perhaps; the new partState starts unpaused.
	cl.ResumeFetchPartitions(assigned)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for topic, parts := range assigned {
		for _, p := range parts {
			tp := topicPartition{topic, p}
			s.parts[tp] = &partState{tp: tp, lane: topic + "/" + strconv.FormatInt(int64(p), 10), source: "kafka://" + topic,
				commit: kgo.EpochOffset{Epoch: -1, Offset: -1}, fenced: make(chan struct{}),
				base: -1, reserved: -1, inherited: -1, handedOut: -1}
			n++
		}
	}
	s.log.Info("partitions assigned", "count", n, "partitions", fmtParts(assigned))
}

// fetched reads the high-water marks that earlier owners left in the commit metadata of
// newly assigned partitions (called after assigned, before their records are fetched).
func (s *Source) fetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	inherit := func(topic string, partition int32, md *string) {
		ps := s.parts[topicPartition{topic, partition}]
		if ps == nil || md == nil || !strings.HasPrefix(*md, hwPrefix) {
			return
		}
		hw, err := strconv.ParseInt(strings.TrimPrefix(*md, hwPrefix), 10, 64)
		if err != nil || hw < 0 {
			return
		}
		ps.inherited = max(ps.inherited, hw)
		ps.reserved = max(ps.reserved, hw)
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			inherit(t.Topic, p.Partition, p.Metadata)
		}
	}
	for _, g := range resp.Groups { // OffsetFetch v8+
		for _, t := range g.Topics {
			for _, p := range t.Partitions {
				inherit(t.Topic, p.Partition, p.Metadata)
			}
		}
	}
	return nil
}

// revoked fences the revoked partitions at once, waits briefly for their pushes on the wire
// to settle, commits their completed prefix (retrying until the deadline) and drops them.
func (s *Source) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	s.mu.Lock()
	for topic, parts := range revoked {
		for _, p := range parts {
			if ps := s.parts[topicPartition{topic, p}]; ps != nil {
				ps.fence()
			}
		}
	}
	s.mu.Unlock()
	s.LaneFreed() // a Read waiting on a revoked partition's records must look again
	deadline := time.Now().Add(revokeWait)
	for !s.closing.Load() && time.Now().Before(deadline) && s.inflight(revoked) > 0 {
		select {
		case <-ctx.Done():
			deadline = time.Now()
		case <-time.After(10 * time.Millisecond):
		}
	}
	for !s.commit(ctx, revoked) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	s.mu.Lock()
	left := 0
	for topic, parts := range revoked {
		for _, p := range parts {
			tp := topicPartition{topic, p}
			if ps := s.parts[tp]; ps != nil {
				left += len(ps.pending)
				delete(s.parts, tp)
			}
		}
	}
	s.mu.Unlock()
	s.reportLag() // drop the lag of topics this replica no longer owns now, not at the next tick
	if len(revoked) > 0 {
		s.log.Info("partitions revoked", "partitions", fmtParts(revoked), "unfinished_fenced", left)
	}
}

// lost fences partitions without committing: another member may own them already.
func (s *Source) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.mu.Lock()
	for topic, parts := range lost {
		for _, p := range parts {
			tp := topicPartition{topic, p}
			if ps := s.parts[tp]; ps != nil {
				ps.fence()
			}
			delete(s.parts, tp)
		}
	}
	s.mu.Unlock()
	s.LaneFreed()
	s.reportLag()
	s.log.Warn("partitions lost; their in-flight records will not be committed", "partitions", fmtParts(lost))
}

// inflight counts handed-out records of the given partitions not settled yet.
func (s *Source) inflight(which map[string][]int32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for topic, parts := range which {
		for _, p := range parts {
			if ps := s.parts[topicPartition{topic, p}]; ps != nil {
				for _, pe := range ps.pending {
					if !pe.settled {
						n++
					}
				}
			}
		}
	}
	return n
}

// commit synchronously commits the completed prefix of the given partitions (all when nil)
// and raises the high-water marks that were asked for, each commit carrying its partition's
// mark in the metadata. It reports whether nothing failed.
func (s *Source) commit(ctx context.Context, only map[string][]int32) bool {
	s.mu.Lock()
	var offsets map[string]map[int32]kgo.EpochOffset
	var marks map[topicPartition]int64
	var committed []*partState
	for tp, ps := range s.parts {
		if !(ps.dirty || ps.reserving) || (only != nil && !slices.Contains(only[tp.topic], tp.partition)) {
			continue
		}
		if offsets == nil { // most ticks of an idle or held consumer commit nothing
			offsets, marks = map[string]map[int32]kgo.EpochOffset{}, map[topicPartition]int64{}
		}
		at := ps.commit
		if at.Offset < 0 {
			if ps.base < 0 {
				continue // nothing fetched yet: nothing to reserve for
			}
			at = kgo.EpochOffset{Epoch: -1, Offset: ps.base}
		}
		mark := ps.reserved
		if ps.reserving && !ps.fencedClosed {
			from := max(ps.handedOut+1, at.Offset)
			if len(ps.buffered) > 0 {
				from = max(from, ps.buffered[0].Offset) // past a gap (compaction, control records)
			}
			mark = max(mark, from+reserveStep)
		}
		if offsets[tp.topic] == nil {
			offsets[tp.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[tp.topic][tp.partition] = at
		marks[tp] = mark
		ps.dirty = false
		committed = append(committed, ps)
	}
	s.mu.Unlock()
	if len(offsets) == 0 {
		return true
	}
	// Every commit carries the mark: a commit without it would erase it.
	ctx = kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			t := &req.Topics[i]
			for j := range t.Partitions {
				if mark, ok := marks[topicPartition{t.Topic, t.Partitions[j].Partition}]; ok && mark >= 0 {
					md := hwPrefix + strconv.FormatInt(mark, 10)
					t.Partitions[j].Metadata = &md
				}
			}
		}
		return nil
	})
	var failed error
	s.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			failed = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerr.ErrorForCode(p.ErrorCode); e != nil && failed == nil {
					failed = fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, e)
				}
			}
		}
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if failed != nil {
		s.ev.Error(adapters.ErrorCommit)
		s.log.Warn("commit failed; will retry", "error", failed)
		for _, ps := range committed {
			if s.parts[ps.tp] == ps {
				ps.dirty = true
			}
		}
		return false
	}
	raised := false
	for _, ps := range committed {
		if mark := marks[ps.tp]; mark > ps.reserved {
			ps.reserved = mark
			raised = true
		}
		ps.reserving = false
	}
	if raised {
		s.LaneFreed() // a Read may be waiting for the mark
	}
	return true
}

// loop commits on an interval, refreshes readiness and lag until Close.
func (s *Source) loop() {
	commitT := time.NewTicker(s.cfg.CommitInterval)
	defer commitT.Stop()
	pingT := time.NewTicker(5 * time.Second)
	defer pingT.Stop()
	s.ping()
	for {
		select {
		case <-s.stop:
			return
		case <-commitT.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			s.commit(ctx, nil)
			cancel()
			s.reportLag()
		case <-s.kick:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			s.commit(ctx, nil)
			cancel()
		case <-pingT.C:
			s.ping()
		}
	}
}

func (s *Source) ping() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := s.cl.Ping(ctx)
	if err != nil {
		err = fmt.Errorf("kafka: brokers unreachable: %w", err)
	}
	prev := s.ready.Swap(&err)
	switch {
	case err != nil && *prev == nil:
		s.log.Warn("broker connection lost", "error", err)
	case err == nil && *prev != nil:
		s.log.Info("broker connected", "brokers", s.cfg.Brokers)
	}
	s.ev.SetSourceReady(err == nil)
}

// reportLag exports the lag of the partitions this replica owns, by topic. A topic it owns
// no partition of any more (revoked or lost) loses its series (adapters.Events.SetConsumerLag), so
// the sum over a fleet is the group's lag.
func (s *Source) reportLag() {
	s.mu.Lock()
	lag := map[string]int64{}
	for tp, ps := range s.parts {
		pos := ps.commit.Offset
		if len(ps.pending) > 0 {
			pos = ps.pending[0].offset
		}
		if pos >= 0 && ps.hwm > pos {
			lag[tp.topic] += ps.hwm - pos
		} else {
			lag[tp.topic] += 0
		}
	}
	if maps.Equal(lag, s.lastLag) {
		// Not published again: SetConsumerLag collects the gauge's series, and reportLag
		// runs on every commit tick.
		s.mu.Unlock()
		return
	}
	s.lastLag = lag
	// Published under mu, so a report taken before a revoke cannot land after the
	// revoke's own report and bring the dropped topic back.
	s.ev.SetConsumerLag(lag)
	s.mu.Unlock()
}

// Ready implements adapters.Source.
func (s *Source) Ready() error { return *s.ready.Load() }

// DeadLetter implements adapters.Source: a synchronous produce to the dead-letter topic,
// acknowledged by the brokers (acks=all) before it returns.
func (s *Source) DeadLetter(ctx context.Context, d *adapters.Delivery, f adapters.Failure) error {
	if s.dlq == "" {
		return adapters.ErrNoDeadLetter
	}
	if d.IsFenced() {
		return fmt.Errorf("kafka: dead-letter %s/%d@%d: partition revoked: %w", strings.TrimPrefix(d.Source, "kafka://"), d.Partition, d.Offset, adapters.ErrStaleDelivery)
	}
	return produceDeadLetter(ctx, s.cl, s.dlq, d, f)
}

// produceDeadLetter writes d's copy with the failure headers to topic dlq and returns once
// the brokers acknowledged it (acks=all).
func produceDeadLetter(ctx context.Context, cl *kgo.Client, dlq string, d *adapters.Delivery, f adapters.Failure) error {
	rec := &kgo.Record{Topic: dlq, Value: d.Payload}
	if d.Key != "" {
		rec.Key = []byte(d.Key)
	}
	for _, h := range d.Headers {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: []byte(h.Value)})
	}
	for _, h := range adapters.FailureHeaders(d, f) {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: []byte(h.Value)})
	}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return fmt.Errorf("kafka: dead-letter to %s: %w", dlq, err)
	}
	return nil
}

// Close implements adapters.Source: it commits the completed prefix of every partition and
// leaves the group (a static member keeps its partitions until the session times out, so a
// restart takes them back without a rebalance).
func (s *Source) Close(ctx context.Context) error {
	err := adapters.ErrClosed
	s.closeOnce.Do(func() {
		err = nil
		s.closing.Store(true)
		close(s.stop)
		s.life.Stop(nil)
		s.commit(ctx, nil)
		// Leaving waits for a rebalance in progress to complete (other members revoking,
		// a join of this one), which can outlast any shutdown budget. Everything completed
		// is committed by now and every delivery settled, so a leave cut short costs only
		// this: the group keeps the member until its session times out.
		done := make(chan struct{})
		go func() { s.cl.CloseAllowingRebalance(); close(done) }()
		t := time.NewTimer(leaveWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			s.log.Warn("stopped without waiting for the group's rebalance in progress; the group drops this member after its session timeout", "waited", leaveWait)
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("kafka: close: %w", ctx.Err())
		}
		closed := fmt.Errorf("kafka: %w", adapters.ErrClosed)
		s.ready.Store(&closed)
		s.log.Info("kafka source closed")
	})
	if err != nil {
		return err
	}
	return s.closeErr
}

// kill abandons the source as kill -9 would: every partition is fenced so nothing more is
// committed, then the client is closed. For tests of unclean stops.
func (s *Source) kill() {
	s.mu.Lock()
	clear(s.parts)
	s.mu.Unlock()
	s.closing.Store(true)
	s.closeOnce.Do(func() {
		close(s.stop)
		s.life.Stop(nil)
		s.cl.CloseAllowingRebalance()
		closed := fmt.Errorf("kafka: %w", adapters.ErrClosed)
		s.ready.Store(&closed)
	})
}

func fmtParts(m map[string][]int32) string {
	var b strings.Builder
	for topic, parts := range m {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s%v", topic, parts)
	}
	return b.String()
}

// kgoLogger routes franz-go's logs through slog. The client logs every step of a rebalance
// at info; we keep its warnings and errors at info level and everything at debug.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel {
	if k.l.Enabled(context.Background(), slog.LevelDebug) {
		return kgo.LogLevelDebug
	}
	return kgo.LogLevelWarn
}

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelDebug
	switch level {
	case kgo.LogLevelError:
		lvl = slog.LevelError
	case kgo.LogLevelWarn:
		lvl = slog.LevelWarn
	}
	k.l.Log(context.Background(), lvl, "franz-go: "+msg, keyvals...)
}
