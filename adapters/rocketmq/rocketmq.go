package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Errors of this adapter. Callers classify with errors.Is.
var (
	// ErrUnknownDelivery is returned by DeadLetter in broker mode for a delivery this source
	// did not hand out or whose callback already returned (after Close).
	ErrUnknownDelivery = errors.New("rocketmq: delivery is not pending in this source")
)

const (
	// maxReconsumeTimes is "never" for the broker: the gate decides when to dead-letter.
	maxReconsumeTimes = 1 << 30
	// defaultMaxInflight bounds concurrent callbacks when WithMaxInflight is not used.
	defaultMaxInflight = 64
	// dlqMarkTTL is how long a broker-mode dead-letter mark is remembered for a failed
	// send-back that the client hands back to the callback (it retries every 5 s).
	dlqMarkTTL = 10 * time.Minute
	// readyErrorWindow: a pull failure logged by the client within this window makes Ready
	// report an error.
	readyErrorWindow = 15 * time.Second
	// verdictGrace is how long Close waits between the last callback returning and the
	// consumer's Shutdown (see Close).
	verdictGrace = 250 * time.Millisecond
	// sendBackGrace replaces verdictGrace after a RECONSUME_LATER: the client then sends the
	// message back with a synchronous request whose timeout is 3 s, and records the offset
	// only after it succeeded.
	sendBackGrace = 3 * time.Second
	// persistGrace is how long Close leaves the connections open after persisting offsets.
	persistGrace = 200 * time.Millisecond
	// healthInterval is how often readiness and consumer lag are refreshed.
	healthInterval = 5 * time.Second
	// startBackoffMin and startBackoffMax bound the pause between two attempts to start the
	// consumer while the name server is unreachable or has no route for the topic (doubling).
	startBackoffMin = time.Second
	startBackoffMax = 30 * time.Second
	// startProbeTimeout bounds the route request to each name server before a start attempt.
	startProbeTimeout = 2 * time.Second
)

// clientConsumeTimeout is the client's ConsumeTimeout. The client uses it for three things:
// a warning when a callback runs longer (logged at debug by the bridge: the gate owns
// timeouts), an expiry sweep that sends messages older than it back to the retry topic
// while they are still being processed (disabled: the adapter removes the
// CONSUME_START_TIME property the sweep reads), and the first sleep of the sweep goroutine,
// which outlives Close by up to this long. The client's default: the sweep also reads the
// process queue without its lock (see the package doc), so running it rarely keeps that race
// rare.
var clientConsumeTimeout = 15 * time.Minute

// instanceSeq makes InstanceName unique per Source within the process.
var instanceSeq atomic.Int64

// instanceName is the configured name (stable across restarts, so the broker sees the same
// client and hands back its orderly queue locks at once), else one unique per Source.
func instanceName(configured string) string {
	if configured != "" {
		return configured
	}
	return fmt.Sprintf("mqsidecar-%d-%d", os.Getpid(), instanceSeq.Add(1))
}

// Option configures a Source.
type Option func(*options)

type options struct {
	log         *slog.Logger
	ev          adapters.Events
	maxInflight int
	maxBytes    int64
}

// WithLogger sets the logger (default slog.Default()); the client's own logs go through it
// as well (see the package doc).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithEvents sets where the adapter reports readiness, consumer lag and errors (default
// adapters.NoEvents).
func WithEvents(e adapters.Events) Option { return func(o *options) { o.ev = e } }

// WithMaxInflight bounds how many messages are handed out and unsettled at once in
// concurrent mode (the client's consume goroutines per topic; the retry topic has its own
// pool of the same size). Use delivery.max_inflight. Default 64.
func WithMaxInflight(n int) Option { return func(o *options) { o.maxInflight = n } }

// WithMaxBufferBytes bounds the bytes of the messages the client caches ahead of the gate
// (G4; the adapter's half of delivery.max_buffer_bytes), through the client's
// PullThresholdSizeForTopic: the client divides it among the queues it consumes (the
// retry topic's included) and stops pulling a queue that caches its share. The client
// counts whole MiB, at least 1 MiB per queue, and a queue may overshoot its share by
// one pull (the broker returns at most 256 KiB per pull from memory, but always one
// message). Default 32 MiB.
func WithMaxBufferBytes(n int64) Option { return func(o *options) { o.maxBytes = n } }

// defaultMaxBufferBytes is the byte budget when WithMaxBufferBytes is not used: half of
// delivery.max_buffer_bytes's default.
const defaultMaxBufferBytes = 32 << 20

// pullThresholdMiB is the client's PullThresholdSizeForTopic (whole MiB, 1..102400) for a
// budget of n bytes.
func pullThresholdMiB(n int64) int {
	if n <= 0 {
		n = defaultMaxBufferBytes
	}
	return int(min(102400, max(1, n>>20)))
}

// pushConsumer is the part of the client's push consumer the Source uses (a seam for unit
// tests without a broker).
type pushConsumer interface {
	Start() error
	Shutdown() error
	Suspend()
	GetOffsetDiffMap() map[string]int64
}

// Source is the RocketMQ adapter. Create it with New.
type Source struct {
	cfg       Settings
	dlTarget  string
	log       *slog.Logger
	ev        adapters.Events
	orderly   bool
	brokerDLQ bool
	suspend   time.Duration
	instance  string

	consumer pushConsumer // nil until the consumer started (guarded by startMu until then)
	producer rmq.Producer // nil unless dead_letter_mode topic with a target

	// Starting (see Run): newConsumer builds a subscribed, unstarted consumer; startMu
	// orders a start attempt (and the producer's start) against Close; loop is Run.
	newConsumer     func() (pushConsumer, func() map[primitive.MessageQueue]int64, error)
	startMu         sync.Mutex
	loop            lifecycle.Loop
	producerStarted bool // guarded by startMu

	out      chan *adapters.Delivery // unbuffered: a callback hands a delivery to Read
	closing  chan struct{}           // closed when Close (or kill) starts
	released chan struct{}           // closed after the consumer's Shutdown
	closed   atomic.Bool
	stopHC   chan struct{} // stops the health checks (Run)

	// lastRetry is when a callback last returned RECONSUME_LATER (UnixNano), see Close.
	lastRetry atomic.Int64

	// mu guards the callback accounting below.
	mu       sync.Mutex
	entered  bool // false once released: late callbacks return at once
	active   int  // callbacks running
	holding  int  // callbacks waiting for released
	changed  chan struct{}
	pending  map[*adapters.Delivery]*inflight
	dlqMarks map[string]time.Time // broker mode: coordinates → when marked

	ready atomic.Pointer[error]

	// Fleet state (fleet.go): the queues allocated to this source per topic, and the
	// reservation group.
	qmu        sync.Mutex
	alloc      map[string]map[primitive.MessageQueue]*queueState
	leaving    map[primitive.MessageQueue]*queueState // revoked, until the client dropped them (queueOf)
	addrs      map[string]string                      // broker name → master address (brokerAddr)
	hwmGroup   string
	salt       int64                                   // added to each reservation, see newSource
	group      string                                  // the consumer group as the broker knows it (with the namespace)
	memOffsets func() map[primitive.MessageQueue]int64 // the client's offsets in memory; nil in unit tests
	hwmOff     atomic.Bool                             // the broker refused the reservation group
	creds      primitive.Credentials

	// Verdict holds (fleet.go, holdVerdicts): vopen is closed while vholds is 0 (guarded by
	// vmu); lastVerdict is when a verdict last went back to the client (UnixNano).
	vmu         sync.Mutex
	vholds      int
	vopen       chan struct{}
	lastVerdict atomic.Int64
}

// inflight is one handed-out message awaiting settlement.
type inflight struct {
	msg    *primitive.MessageExt
	d      *adapters.Delivery
	result chan error // written once, by Delivery.Ack
	dlq    atomic.Bool
	st     *queueState // its queue (fleet.go); nil when allocations are unknown
}

// New creates the push consumer (and the dead-letter producer when configured); Run starts
// them. It fails only on a configuration error and starts no goroutine: when no name server
// answers, or none has a route for the topic (it does not exist yet), Run reports which of
// the two it is in Ready and retries the start (1 s doubling to 30 s) until it succeeds,
// Close or ctx's end. deadLetterTarget is delivery.dead_letter.target ("" = none).
func New(cfg Settings, deadLetterTarget string, opts ...Option) (*Source, error) {
	o := options{log: slog.Default(), maxInflight: defaultMaxInflight}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxInflight < 1 {
		o.maxInflight = 1
	}
	var ck settings.Checker
	if cfg.Check(&ck, deadLetterTarget); len(ck.Problems) > 0 {
		return nil, ck.Err("rocketmq")
	}
	creds := credentials(cfg)
	installLogBridge(o.log)

	s := newSource(cfg, deadLetterTarget, o)
	s.creds = creds
	resolver := primitive.NewPassthroughResolver(cfg.Nameservers)
	copts := []consumer.Option{
		consumer.WithNsResolver(resolver),
		consumer.WithGroupName(cfg.Group),
		consumer.WithInstance(s.instance),
		consumer.WithConsumerModel(consumer.Clustering),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
		consumer.WithConsumerOrder(s.orderly),
		consumer.WithStrategy(s.allocate),
		consumer.WithConsumeMessageBatchMaxSize(1),
		consumer.WithMaxReconsumeTimes(maxReconsumeTimes),
		consumer.WithSuspendCurrentQueueTimeMillis(cfg.SuspendTime),
		consumer.WithConsumeTimeout(clientConsumeTimeout),
		consumer.WithConsumeGoroutineNums(o.maxInflight),
		// Bounded prefetch (G4): at most this many messages cached per queue, and the
		// byte budget (WithMaxBufferBytes) across queues; the per-queue size is the whole
		// budget until the client knows its queues and divides it among them.
		consumer.WithPullThresholdForQueue(int64(max(2*o.maxInflight, 64))),
		consumer.WithPullThresholdSizeForTopic(pullThresholdMiB(o.maxBytes)),
		consumer.WithPullThresholdSizeForQueue(min(1024, pullThresholdMiB(o.maxBytes))),
	}
	if cfg.Namespace != "" {
		copts = append(copts, consumer.WithNamespace(cfg.Namespace))
	}
	if !creds.IsEmpty() {
		copts = append(copts, consumer.WithCredentials(creds))
	}
	s.newConsumer = func() (pushConsumer, func() map[primitive.MessageQueue]int64, error) {
		c, err := consumer.NewPushConsumer(copts...)
		if err != nil {
			return nil, nil, fmt.Errorf("rocketmq: new consumer for group %q: %w", cfg.Group, err)
		}
		sel := consumer.MessageSelector{Type: consumer.TAG, Expression: cfg.Tags}
		if err := c.Subscribe(cfg.Topic, sel, s.consume); err != nil {
			_ = c.Shutdown()
			return nil, nil, fmt.Errorf("rocketmq: subscribe %q: %w", cfg.Topic, err)
		}
		mem := func() map[primitive.MessageQueue]int64 {
			info := c.GetConsumerRunningInfo(false)
			out := make(map[primitive.MessageQueue]int64, len(info.MQTable))
			for mq, pi := range info.MQTable {
				out[mq] = pi.CommitOffset
			}
			return out
		}
		return c, mem, nil
	}

	if deadLetterTarget != "" && !s.brokerDLQ {
		popts := []producer.Option{
			producer.WithNsResolver(resolver),
			producer.WithGroupName(cfg.Group + "-mqsidecar-dlq"),
			producer.WithInstanceName(s.instance + "-dlq"),
			producer.WithRetry(2),
			producer.WithSendMsgTimeout(10 * time.Second),
		}
		if cfg.Namespace != "" {
			popts = append(popts, producer.WithNamespace(cfg.Namespace))
		}
		if !creds.IsEmpty() {
			popts = append(popts, producer.WithCredentials(creds))
		}
		p, err := rmq.NewProducer(popts...)
		if err != nil {
			return nil, fmt.Errorf("rocketmq: new dead-letter producer: %w", err)
		}
		s.producer = p // started by Run
	}
	return s, nil
}

// Run starts the dead-letter producer and the consumer, then checks the broker's health
// every healthInterval (Ready, consumer lag), until ctx is done or Close. A name server that
// is down, or has no route for the topic yet, does not fail Run (the client would fail
// Start with "route info not found"): Ready reports why and the start is retried
// (startBackoffMin doubling to startBackoffMax). Cancelling ctx closes the source (Close,
// within adapters.CloseWait). Run fails only when the producer cannot start.
func (s *Source) Run(ctx context.Context) error {
	return s.loop.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, s.Close), func() error { return s.run(ctx) })
}

func (s *Source) run(ctx context.Context) error {
	if err := s.startProducer(); err != nil {
		return err
	}
	if err := s.tryStart(); err != nil {
		s.notStarted(err, startBackoffMin)
		if !s.retryStart(ctx) {
			return nil
		}
	}
	watched := make(chan struct{})
	go func() { defer close(watched); s.watchContention(ctx) }()
	s.health(ctx)
	<-watched
	return nil
}

// startProducer starts the dead-letter producer, unless Close came first. Starting it
// contacts no server; it finds routes on its first send.
func (s *Source) startProducer() error {
	if s.producer == nil {
		return nil
	}
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.closed.Load() {
		return nil
	}
	if err := s.producer.Start(); err != nil {
		return fmt.Errorf("rocketmq: start dead-letter producer: %w", err)
	}
	s.producerStarted = true
	return nil
}

// shutdownProducer shuts the dead-letter producer down if Run started it.
func (s *Source) shutdownProducer() error {
	s.startMu.Lock()
	started := s.producerStarted
	s.producerStarted = false
	s.startMu.Unlock()
	if !started {
		return nil
	}
	return s.producer.Shutdown()
}

// tryStart makes one attempt to start the consumer: only once a name server answers with a
// route for the topic (without one the client's Start fails, and every attempt of the client
// would leave statistics goroutines behind, see the package doc).
func (s *Source) tryStart() error {
	if err := probeRoute(s.cfg.Nameservers, s.routeTopic(), startProbeTimeout); err != nil {
		return err
	}
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.closed.Load() {
		// Before building the consumer: the client's Shutdown of a consumer that never
		// started dereferences state only Start sets.
		return fmt.Errorf("rocketmq: %w", adapters.ErrClosed)
	}
	c, mem, err := s.newConsumer()
	if err != nil {
		return err
	}
	// Set before Start: the client's rebalance calls the strategy (fleet.go) from then on.
	s.consumer, s.memOffsets = c, mem
	if err := c.Start(); err != nil {
		// Start shuts the consumer down itself when the topic has no route.
		_ = c.Shutdown()
		s.consumer, s.memOffsets = nil, nil
		return fmt.Errorf("rocketmq: start consumer (group %q, topic %q, name servers %v): %w",
			s.cfg.Group, s.cfg.Topic, s.cfg.Nameservers, err)
	}
	s.setReady(nil)
	s.log.Info("rocketmq consumer started", "topic", s.cfg.Topic, "group", s.cfg.Group, "mode", s.cfg.Mode,
		"tags", s.cfg.Tags, "nameservers", s.cfg.Nameservers, "instance", s.instance,
		"dead_letter_mode", s.cfg.DeadLetterMode, "dead_letter_target", s.dlTarget)
	return nil
}

// retryStart retries tryStart with backoff (startBackoffMin doubling to startBackoffMax)
// until it succeeds (true), Close or ctx's end; Ready reports the last failure meanwhile.
func (s *Source) retryStart(ctx context.Context) bool {
	delay := startBackoffMin
	for {
		t := time.NewTimer(delay)
		select {
		case <-s.closing:
			t.Stop()
			return false
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		err := s.tryStart()
		if err == nil {
			return true
		}
		if s.closed.Load() {
			return false
		}
		delay = min(2*delay, startBackoffMax)
		s.notStarted(err, delay)
	}
}

// notStarted reports a failed start attempt in Ready and the log.
func (s *Source) notStarted(err error, retryIn time.Duration) {
	s.countError(adapters.ErrorBroker)
	s.setReady(fmt.Errorf("%w (consumer not started; next attempt in %s)", err, retryIn))
	s.log.Warn("rocketmq consumer not started, retrying", "error", err, "retry_in", retryIn)
}

// newSource builds the Source state without a client (shared with unit tests).
func newSource(cfg Settings, deadLetterTarget string, o options) *Source {
	if o.ev == nil {
		o.ev = adapters.NoEvents{}
	}
	s := &Source{
		cfg:       cfg,
		dlTarget:  deadLetterTarget,
		log:       o.log.With("source", "rocketmq", "topic", cfg.Topic, "group", cfg.Group),
		ev:        o.ev,
		orderly:   cfg.Mode == "orderly",
		brokerDLQ: cfg.DeadLetterMode == "broker",
		suspend:   cfg.SuspendTime,
		instance:  instanceName(cfg.InstanceName),
		out:       make(chan *adapters.Delivery),
		closing:   make(chan struct{}),
		released:  make(chan struct{}),
		stopHC:    make(chan struct{}),
		entered:   true,
		changed:   make(chan struct{}),
		pending:   make(map[*adapters.Delivery]*inflight),
		dlqMarks:  make(map[string]time.Time),

		vopen: closedFence,

		alloc:    make(map[string]map[primitive.MessageQueue]*queueState),
		leaving:  make(map[primitive.MessageQueue]*queueState),
		addrs:    make(map[string]string),
		hwmGroup: cfg.Group + hwmGroupSuffix,
		group:    cfg.Group,
		// Two members that reserve a queue at once from the same offset write different
		// values, so each can tell the other's reservation from its own.
		salt: 1 + rand.Int64N(reserveStep-1),
	}
	if cfg.Namespace != "" {
		// The client prefixes group names with the namespace; the raw requests must too.
		s.hwmGroup = cfg.Namespace + "%" + s.hwmGroup
		s.group = cfg.Namespace + "%" + s.group
	}
	notStarted := errors.New("rocketmq: consumer not started")
	s.ready.Store(&notStarted)
	return s
}

// credentials returns the ACL credentials (empty without an access key; Check requires the
// secret key with it, which config.Load read from secret_key_file when that was named).
func credentials(cfg Settings) primitive.Credentials {
	if cfg.AccessKey == "" {
		return primitive.Credentials{}
	}
	return primitive.Credentials{AccessKey: cfg.AccessKey, SecretKey: cfg.SecretKey.Reveal()}
}

// Read implements adapters.Source.
func (s *Source) Read(ctx context.Context) (*adapters.Delivery, error) {
	if s.closed.Load() {
		return nil, adapters.ErrClosed
	}
	select {
	case d := <-s.out:
		return d, nil
	case <-s.closing:
		return nil, adapters.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// enter registers a running callback; false once the consumer was shut down.
func (s *Source) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.entered {
		return false
	}
	s.active++
	s.broadcastLocked()
	return true
}

func (s *Source) leave() {
	s.mu.Lock()
	s.active--
	s.broadcastLocked()
	s.mu.Unlock()
}

// hold blocks a callback until the consumer was shut down (its verdict is then discarded by
// the client, so the message stays unacknowledged in the queue).
func (s *Source) hold() {
	s.mu.Lock()
	s.holding++
	s.broadcastLocked()
	s.mu.Unlock()
	<-s.released
	s.mu.Lock()
	s.holding--
	s.broadcastLocked()
	s.mu.Unlock()
}

// broadcastLocked wakes everyone waiting for a change of active/holding. mu must be held.
func (s *Source) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitCallbacks waits until cond(active, holding) holds or ctx ends.
func (s *Source) waitCallbacks(ctx context.Context, cond func(active, holding int) bool) error {
	for {
		s.mu.Lock()
		ok := cond(s.active, s.holding)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// consume is the client's callback (one message per call; written for any batch size).
func (s *Source) consume(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	if !s.enter() {
		return s.notDone(ctx), nil
	}
	defer s.leave()
	// Runs before leave: the verdict goes back to the client once no rebalance holds it.
	defer s.passVerdict(msgs)
	if !s.orderly {
		// Keeps the client's expiry sweep from sending a message back to the retry topic
		// while the gate is still working on it (see clientConsumeTimeout).
		for _, m := range msgs {
			m.RemoveProperty(primitive.PropertyConsumeStartTime)
		}
	}
	// A broker-mode dead letter whose send-back failed comes back to the callback: repeat
	// the verdict without handing it out again.
	if s.brokerDLQ && s.allMarked(msgs) {
		return s.deadLetterVerdict(ctx, msgs), nil
	}

	infs := make([]*inflight, 0, len(msgs))
	for _, m := range msgs {
		inf := s.newInflight(m)
		if !s.admit(inf) {
			// Its queue was revoked (or the source is closing) before it was handed out.
			s.forget(inf)
			s.awaitDrop(inf)
			for _, inf := range infs {
				inf.d.Settle(adapters.ErrNotDone)
				<-inf.result
				s.forget(inf)
			}
			if isClosed(s.closing) && (len(infs) == 0 || s.orderly) {
				s.hold()
			}
			return s.notDone(ctx), nil
		}
		select {
		case s.out <- inf.d:
			infs = append(infs, inf)
		case <-s.closing:
			s.forget(inf)
			for _, inf := range infs {
				inf.d.Settle(adapters.ErrNotDone)
				<-inf.result
				s.forget(inf)
			}
			if len(infs) == 0 || s.orderly {
				// Never handed out (or orderly): keep it in the queue, untouched.
				s.hold()
			}
			return s.notDone(ctx), nil
		}
	}

	allDone, dlq := true, false
	for _, inf := range infs {
		var err error
		select {
		case err = <-inf.result:
		case <-s.closing:
			// Not settled by Close: not done. A later Settle from the gate is ignored.
			inf.d.Settle(adapters.ErrNotDone)
			err = <-inf.result
		}
		s.forget(inf)
		if err != nil {
			allDone = false
			s.awaitDrop(inf)
		} else if inf.dlq.Load() {
			dlq = true
		}
	}
	switch {
	case !allDone:
		if s.orderly && isClosed(s.closing) {
			s.hold()
		}
		return s.notDone(ctx), nil
	case dlq:
		return s.deadLetterVerdict(ctx, msgs), nil
	default:
		return consumer.ConsumeSuccess, nil
	}
}

// notDone is the verdict for "not done": retry topic (concurrent) or a pause of the queue
// (orderly).
func (s *Source) notDone(ctx context.Context) consumer.ConsumeResult {
	if s.orderly {
		if octx, ok := primitive.GetOrderlyCtx(ctx); ok {
			octx.SuspendCurrentQueueTimeMillis = int(s.suspend / time.Millisecond)
		}
		return consumer.SuspendCurrentQueueAMoment
	}
	s.lastRetry.Store(time.Now().UnixNano())
	return consumer.ConsumeRetryLater
}

// deadLetterVerdict makes the client send msgs back with delay level -1: the broker stores
// them in %DLQ%<group> and the client then advances past them.
func (s *Source) deadLetterVerdict(ctx context.Context, msgs []*primitive.MessageExt) consumer.ConsumeResult {
	for _, m := range msgs {
		// Orderly: the client dead-letters when reconsume times exceed the maximum. Both
		// modes: should the send-back fail and the client fall back to publishing to the
		// retry topic, the broker moves the copy to %DLQ% for the same reason.
		m.ReconsumeTimes = maxReconsumeTimes + 1
	}
	if s.orderly {
		if octx, ok := primitive.GetOrderlyCtx(ctx); ok {
			octx.SuspendCurrentQueueTimeMillis = int(s.suspend / time.Millisecond)
		}
		return consumer.SuspendCurrentQueueAMoment
	}
	if cctx, ok := primitive.GetConcurrentlyCtx(ctx); ok {
		cctx.DelayLevelWhenNextConsume = -1
	}
	s.lastRetry.Store(time.Now().UnixNano())
	return consumer.ConsumeRetryLater
}

func (s *Source) newInflight(m *primitive.MessageExt) *inflight {
	inf := &inflight{msg: m, result: make(chan error, 1)}
	d := s.delivery(m)
	d.Ack = func(err error) { inf.result <- err }
	inf.d = d
	s.mu.Lock()
	s.pending[d] = inf
	s.mu.Unlock()
	return inf
}

func (s *Source) forget(inf *inflight) {
	s.mu.Lock()
	delete(s.pending, inf.d)
	s.mu.Unlock()
}

// markKey identifies one stored message for the broker-mode dead-letter marks.
func markKey(m *primitive.MessageExt) string {
	if q := m.Queue; q != nil {
		// The queue's topic, not m.Topic: the client renames retry copies to their original
		// topic, and a retry copy has coordinates of its own.
		return fmt.Sprintf("%s/%s/%d/%d", q.BrokerName, q.Topic, q.QueueId, m.QueueOffset)
	}
	return fmt.Sprintf("%s/%s/%d", m.StoreHost, m.Topic, m.QueueOffset)
}

func (s *Source) allMarked(msgs []*primitive.MessageExt) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, m := range msgs {
		t, ok := s.dlqMarks[markKey(m)]
		if !ok || now.Sub(t) > dlqMarkTTL {
			return false
		}
	}
	return true
}

// DeadLetter implements adapters.Source; see the package doc for the two modes.
func (s *Source) DeadLetter(ctx context.Context, d *adapters.Delivery, f adapters.Failure) error {
	if d.IsFenced() {
		// Its queue was revoked: the new owner gets the message again, and a dead letter
		// written here would be a second copy of a message someone else delivers.
		return fmt.Errorf("rocketmq: dead-letter %q: its message queue was revoked: %w", d.ID, adapters.ErrStaleDelivery)
	}
	if s.brokerDLQ {
		s.mu.Lock()
		defer s.mu.Unlock()
		inf := s.pending[d]
		if inf == nil {
			return fmt.Errorf("rocketmq: dead-letter %q to %%DLQ%%%s: %w", d.ID, s.cfg.Group, ErrUnknownDelivery)
		}
		inf.dlq.Store(true)
		now := time.Now()
		for k, t := range s.dlqMarks {
			if now.Sub(t) > dlqMarkTTL {
				delete(s.dlqMarks, k)
			}
		}
		s.dlqMarks[markKey(inf.msg)] = now
		return nil
	}
	if s.producer == nil {
		return adapters.ErrNoDeadLetter
	}
	if s.closed.Load() {
		return fmt.Errorf("rocketmq: dead-letter %q: %w", d.ID, adapters.ErrClosed)
	}
	s.mu.Lock()
	inf := s.pending[d]
	s.mu.Unlock()
	var orig *primitive.MessageExt
	if inf != nil {
		orig = inf.msg
	}
	msg := s.deadLetterMessage(d, orig, f)
	res, err := s.producer.SendSync(ctx, msg)
	if err != nil {
		s.countError(adapters.ErrorDeadLetter)
		return fmt.Errorf("rocketmq: dead-letter %q to %q: %w", d.ID, s.dlTarget, err)
	}
	if res.Status != primitive.SendOK {
		s.countError(adapters.ErrorDeadLetter)
		return fmt.Errorf("rocketmq: dead-letter %q to %q: broker answered %s, not SEND_OK", d.ID, s.dlTarget, sendStatus(res.Status))
	}
	return nil
}

func sendStatus(st primitive.SendStatus) string {
	switch st {
	case primitive.SendOK:
		return "SEND_OK"
	case primitive.SendFlushDiskTimeout:
		return "FLUSH_DISK_TIMEOUT"
	case primitive.SendFlushSlaveTimeout:
		return "FLUSH_SLAVE_TIMEOUT"
	case primitive.SendSlaveNotAvailable:
		return "SLAVE_NOT_AVAILABLE"
	default:
		return fmt.Sprintf("status %d", st)
	}
}

// Ready implements adapters.Source.
func (s *Source) Ready() error { return *s.ready.Load() }

func (s *Source) setReady(err error) {
	prev := s.ready.Swap(&err)
	switch {
	case err != nil && *prev == nil && !errors.Is(err, adapters.ErrClosed):
		s.log.Warn("rocketmq source not ready", "error", err)
	case err == nil && *prev != nil && !errors.Is(*prev, adapters.ErrClosed):
		s.log.Info("rocketmq source ready")
	}
	s.ev.SetSourceReady(err == nil)
}

func (s *Source) countError(kind string) { s.ev.Error(kind) }

// routeTopic is the topic as the name server knows it (with the namespace prefix).
func (s *Source) routeTopic() string {
	if s.cfg.Namespace != "" {
		return s.cfg.Namespace + "%" + s.cfg.Topic
	}
	return s.cfg.Topic
}

// health refreshes readiness and consumer lag until Close.
func (s *Source) health(ctx context.Context) {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	var seen time.Time
	for {
		select {
		case <-s.stopHC:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		when, msg := lastPullError()
		if when.After(seen) {
			seen = when
			s.countError(adapters.ErrorBroker)
		}
		if err := probe(s.cfg.Nameservers, s.routeTopic(), 2*time.Second); err != nil {
			s.countError(adapters.ErrorBroker)
			s.setReady(err)
		} else if time.Since(when) < readyErrorWindow {
			s.setReady(fmt.Errorf("rocketmq: pulling from the broker failed %s ago: %s", time.Since(when).Round(time.Second), msg))
		} else {
			s.setReady(nil)
		}
		// The client reports the queues this replica holds now; a topic whose queues all
		// went to other replicas loses its series instead of keeping its last value.
		s.ev.SetConsumerLag(s.consumer.GetOffsetDiffMap())
		if g, ok := s.ev.(adapters.QueueGauges); ok {
			g.SetQueueLag(s.queueLag())
		}
	}
}

// Close implements adapters.Source; see the package doc for what happens to unsettled
// deliveries.
func (s *Source) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return adapters.ErrClosed
	}
	start := time.Now()
	s.log.Info("rocketmq source closing")
	closedErr := fmt.Errorf("rocketmq: %w", adapters.ErrClosed)
	s.startMu.Lock()
	started := s.consumer != nil
	s.startMu.Unlock()
	if !started {
		// Still retrying the start (a start attempt that gets past this sees closed and
		// shuts its consumer down): stop the retries, nothing was handed out.
		return s.closeUnstarted(ctx, closedErr, start)
	}
	// Pause pulling first: fewer messages arrive while draining, and the client's
	// pull-vs-shutdown race (issue #1051) gets a smaller window.
	s.consumer.Suspend()
	close(s.closing)
	close(s.stopHC)
	s.loop.Stop(nil)
	s.setReady(closedErr)

	// Every callback that can return (settled, or sent back as not done) does so while the
	// client still runs; the rest hold until Shutdown.
	var errs []error
	if err := s.waitCallbacks(ctx, func(active, holding int) bool { return active == holding }); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: close: waiting for callbacks: %w", err))
	}
	// The client records a verdict (offset update) in the goroutine that called the callback,
	// just after it returned (after a synchronous send-back for RECONSUME_LATER), and Shutdown
	// persists offsets only once; a verdict recorded after that is lost (a duplicate later,
	// never a loss). The client offers no way to observe that step, so give those goroutines
	// time: verdictGrace, or up to sendBackGrace after the last RECONSUME_LATER.
	grace := verdictGrace
	if last := s.lastRetry.Load(); last != 0 {
		if d := sendBackGrace - time.Since(time.Unix(0, last)); d > grace {
			grace = d
		}
	}
	select {
	case <-time.After(grace):
	case <-ctx.Done():
	}
	// Shutdown persists the offsets with one-way requests and closes the connections right
	// after, which can lose them (a close with unread input resets the connection). Persist
	// on the open connections first and give the broker a moment to read them; Shutdown's
	// own persist then repeats the same offsets.
	if p, ok := s.consumer.(interface{ PersistConsumerOffset() error }); ok {
		if err := p.PersistConsumerOffset(); err != nil {
			errs = append(errs, fmt.Errorf("rocketmq: close: persist offsets: %w", err))
		}
		select {
		case <-time.After(persistGrace):
		case <-ctx.Done():
		}
	}
	// Hand every queue over (fleet.go): its offset saved and confirmed, then the release
	// mark the next owner waits for before it reads that offset.
	s.releaseAll()
	if err := s.consumer.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: close: consumer shutdown: %w", err))
	}
	s.mu.Lock()
	s.entered = false
	s.mu.Unlock()
	close(s.released)
	if err := s.waitCallbacks(ctx, func(active, _ int) bool { return active == 0 }); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: close: callbacks still running after shutdown: %w", err))
	}
	if err := s.shutdownProducer(); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: close: dead-letter producer shutdown: %w", err))
	}
	err := errors.Join(errs...)
	if err != nil {
		s.log.Warn("rocketmq source closed with errors", "error", err, "took", time.Since(start))
	} else {
		s.log.Info("rocketmq source closed", "took", time.Since(start))
	}
	return err
}

// closeUnstarted is Close of a source whose consumer never started: it stops the start
// retries (waiting for the attempt in progress, bounded by ctx) and the dead-letter producer.
func (s *Source) closeUnstarted(ctx context.Context, closedErr error, start time.Time) error {
	close(s.closing)
	var errs []error
	if err := s.loop.StopWithin(ctx); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: close: waiting for the start attempt in progress: %w", err))
	}
	s.setReady(closedErr)
	s.mu.Lock()
	s.entered = false
	s.mu.Unlock()
	close(s.released)
	if err := s.shutdownProducer(); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: close: dead-letter producer shutdown: %w", err))
	}
	err := errors.Join(errs...)
	s.log.Info("rocketmq source closed before its consumer started", "took", time.Since(start), "error", err)
	return err
}

// kill abandons the source as kill -9 would, for tests: the consumer is shut down before any
// callback returns, so nothing unsettled is sent back or acknowledged, and Close afterwards
// only waits for the callbacks.
func (s *Source) kill() {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	s.startMu.Lock()
	started := s.consumer != nil
	s.startMu.Unlock()
	if !started {
		_ = s.closeUnstarted(context.Background(), fmt.Errorf("rocketmq: %w", adapters.ErrClosed), time.Now())
		return
	}
	close(s.stopHC)
	s.loop.Stop(nil)
	s.setReady(fmt.Errorf("rocketmq: %w", adapters.ErrClosed))
	// As in Close: no rebalances triggered by the broker from here on, and in-flight client
	// requests get a moment, because the client's Shutdown races with them (an
	// unsynchronised flag, reported by the race detector).
	s.consumer.Suspend()
	time.Sleep(verdictGrace)
	// Shutdown before waking the callbacks: their verdicts then meet dropped process queues
	// and are discarded, as if the process had died.
	_ = s.consumer.Shutdown()
	s.mu.Lock()
	s.entered = false
	s.mu.Unlock()
	close(s.closing)
	close(s.released)
	_ = s.shutdownProducer()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
