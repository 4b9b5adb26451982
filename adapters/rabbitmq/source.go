package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Errors of this package, beside the shared ones in package adapters. Classify with
// errors.Is.
var (
	// ErrQueueNotFound is reported (through Ready and the log) when the queue does not
	// exist and declare is off. The source keeps retrying, so creating the queue is enough.
	ErrQueueNotFound = errors.New("queue does not exist")

	// ErrStaleDelivery is returned by DeadLetter for a delivery whose channel is gone: the
	// broker already requeued the message and will redeliver it, so it can be neither
	// acknowledged nor dead-lettered any more. The ack gate should settle it (the settlement
	// is dropped) and wait for the redelivery.
	ErrStaleDelivery = fmt.Errorf("delivery's channel is closed: %w", adapters.ErrStaleDelivery)

	// ErrNotConfirmed is returned by DeadLetter when the broker did not confirm the
	// dead-letter copy: it nacked it, returned it as unroutable, or the channel closed.
	ErrNotConfirmed = errors.New("dead-letter publish not confirmed by the broker")
)

// errClosing ends the connection loop when Close was called.
var errClosing = errors.New("closing")

// errConsumerCancelled ends a consume pass when the broker cancelled the consumer.
var errConsumerCancelled = errors.New("consumer cancelled by the broker (queue deleted or node failover)")

// Event names one thing that happened in the source. Events that are errors are counted
// through adapters.Events.Error (errorKind); tests trace all of them (withTrace).
type Event string

// The events of the source.
const (
	// EventConnected: a connection was established and consuming started.
	EventConnected Event = "connected"
	// EventConnectFailed: one connection attempt failed.
	EventConnectFailed Event = "connect_failed"
	// EventConnectionLost: an established connection or channel closed unexpectedly.
	EventConnectionLost Event = "connection_lost"
	// EventConsumerCancelled: the broker cancelled the consumer.
	EventConsumerCancelled Event = "consumer_cancelled"
	// EventStaleSettle: a settlement was dropped because its channel had closed (the
	// broker redelivers that message).
	EventStaleSettle Event = "stale_settle"
	// EventMissingID: a message had no message ID; a random one was generated.
	EventMissingID Event = "missing_message_id"
	// EventDeadLettered: a dead letter was confirmed (publish) or rejected (nack).
	EventDeadLettered Event = "dead_lettered"
	// EventDeadLetterFailed: a dead letter attempt failed.
	EventDeadLetterFailed Event = "dead_letter_failed"
)

// errorKind is the adapters.Events error kind e counts as, "" for none.
func (e Event) errorKind() string {
	switch e {
	case EventConnectFailed, EventConnectionLost, EventConsumerCancelled:
		return adapters.ErrorBroker
	case EventDeadLetterFailed:
		return adapters.ErrorDeadLetter
	case EventMissingID:
		return adapters.ErrorMissingID
	}
	return ""
}

// event reports e: to the trace (tests), and as an error to the events when it is one.
func (s *Source) event(e Event) {
	if s.trace != nil {
		s.trace(e)
	}
	if k := e.errorKind(); k != "" {
		s.events.Error(k)
	}
}

// Option configures New.
type Option func(*options)

type options struct {
	log            *slog.Logger
	events         adapters.Events
	trace          func(Event)
	backoffMin     time.Duration
	backoffMax     time.Duration
	publishTimeout time.Duration
	dialer         func(ctx context.Context, network, addr string) (net.Conn, error)
	depthInterval  time.Duration
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithEvents sets where the adapter reports readiness and errors (default
// adapters.NoEvents).
func WithEvents(e adapters.Events) Option { return func(o *options) { o.events = e } }

// withTrace sees every Event (tests).
func withTrace(f func(Event)) Option { return func(o *options) { o.trace = f } }

// WithBackoff sets the reconnect backoff: the first wait is about min, doubling up to max
// (defaults 500ms and 30s), with jitter.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = min, max }
}

// WithPublishTimeout bounds how long DeadLetter waits for the broker's confirm, on top of
// the caller's ctx (default 30s).
func WithPublishTimeout(d time.Duration) Option { return func(o *options) { o.publishTimeout = d } }

// withDepthInterval sets how often the queue depth is read (tests; default depthInterval).
func withDepthInterval(d time.Duration) Option { return func(o *options) { o.depthInterval = d } }

// withDialer replaces the TCP dialer (tests cut connections through it).
func withDialer(d func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dialer = d }
}

const (
	handshakeTimeout = 15 * time.Second
	heartbeat        = 10 * time.Second
	closeGrace       = 5 * time.Second
)

// Source consumes one RabbitMQ queue. It implements adapters.Source; see the package
// documentation for the contract. Create it with New.
type Source struct {
	// Immutable after New.
	url        string // secret: carries the password; never logged
	addr       string // host:port, for logs (the URL's user info is unambiguous: see New)
	vhost      string
	user       string
	queue      string
	source     string // "rabbitmq://<vhost>/<queue>"
	lane       string
	prefetch   int
	declare    bool
	idHeader   string // "" = message_id property
	dl         deadLetterTarget
	tlsConfig  *tls.Config
	log        *slog.Logger
	events     adapters.Events
	trace      func(Event)
	backoffMin time.Duration
	backoffMax time.Duration
	pubTimeout time.Duration
	dialer     func(ctx context.Context, network, addr string) (net.Conn, error)

	// The queue depth (depth.go): the management API it is read from (nil for none), and how
	// often.
	mgmt          *mgmtAPI
	depthInterval time.Duration

	out       chan *adapters.Delivery // unbuffered: a delivery is handed out or not at all
	closing   chan struct{}           // closed when Close starts
	closeOnce sync.Once
	runCtx    context.Context // cancelled by Close: aborts dials in progress
	runCancel context.CancelFunc
	runLoop   lifecycle.Loop // the connection loop: Run
	killed    atomic.Bool    // tests: abandoned without Close, as by kill -9

	ready   atomic.Pointer[readyState]
	readyMu sync.Mutex // serializes setReady

	mu  sync.Mutex // guards cur
	cur *session   // the newest session; torn down by the loop or by Close

	gen      atomic.Uint64
	inflight sync.Map // *adapters.Delivery → *pending, until settled
	pub      *publisher
	idWarn   atomic.Int64 // unix nanos of the last missing-ID warning
}

type readyState struct{ err error }

// New checks cfg (Settings.Check) and returns a Source that connects once Run runs; it does not
// touch the network and starts no goroutine. deadLetterTarget is delivery.dead_letter.target: "" for none, else
// "exchange[/routing-key]" (used in dead_letter_mode "publish" only).
func New(cfg Settings, deadLetterTarget string, opts ...Option) (*Source, error) {
	var ck settings.Checker
	if cfg.Check(&ck, deadLetterTarget); len(ck.Problems) > 0 {
		return nil, ck.Err("rabbitmq")
	}
	o := options{
		log:            slog.Default(),
		events:         adapters.NoEvents{},
		backoffMin:     500 * time.Millisecond,
		backoffMax:     30 * time.Second,
		publishTimeout: 30 * time.Second,
		dialer:         (&net.Dialer{Timeout: handshakeTimeout, KeepAlive: 30 * time.Second}).DialContext,
		depthInterval:  depthInterval,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.events == nil {
		o.events = adapters.NoEvents{}
	}
	if o.backoffMin <= 0 || o.backoffMax < o.backoffMin {
		return nil, fmt.Errorf("rabbitmq: invalid backoff %v..%v", o.backoffMin, o.backoffMax)
	}

	s := &Source{
		url:        cfg.URL.Reveal(),
		queue:      cfg.Queue,
		prefetch:   cfg.Prefetch,
		declare:    cfg.Declare,
		log:        o.log,
		events:     o.events,
		trace:      o.trace,
		backoffMin: o.backoffMin,
		backoffMax: o.backoffMax,
		pubTimeout: o.publishTimeout,
		dialer:     o.dialer,
		out:        make(chan *adapters.Delivery),
		closing:    make(chan struct{}),
	}
	// Check refused a URL whose user info net/url would split in the wrong place
	// ("amqp://u:#pw@host/" reads as host "u"), which would dial the wrong host and put the
	// password into the address or vhost, which are logged.
	uri, err := amqp.ParseURI(s.url)
	if err != nil {
		if strings.Contains(s.url, "@") {
			// The reason may quote part of the user info ("invalid URL escape").
			return nil, fmt.Errorf("rabbitmq: url: not a valid AMQP URL (value and details not shown, it may hold a password; %s)", urlEncodeHint)
		}
		return nil, fmt.Errorf("rabbitmq: url: not a valid AMQP URL: %v", redactURLError(err))
	}
	s.addr = net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	s.vhost = uri.Vhost
	s.user = uri.Username
	s.mgmt, s.depthInterval = newMgmtAPI(cfg, uri), o.depthInterval
	if len(s.queue) > 255 {
		return nil, fmt.Errorf("rabbitmq: queue: name longer than 255 bytes (%d)", len(s.queue))
	}
	if name, ok := strings.CutPrefix(cfg.MessageID, "header:"); ok { // else "message_id" (Check)
		s.idHeader = name
	}
	s.source = "rabbitmq://" + url.PathEscape(s.vhost) + "/" + s.queue
	if s.prefetch == 1 {
		s.lane = s.source
	}
	if s.dl, err = parseDeadLetter(cfg.DeadLetterMode, deadLetterTarget, s.queue); err != nil {
		return nil, err
	}
	if s.tlsConfig, err = tlsConfig(cfg.TLS); err != nil {
		return nil, err
	}
	if s.mgmt != nil && s.tlsConfig != nil {
		s.mgmt.client.Transport = &http.Transport{TLSClientConfig: s.tlsConfig.Clone()} // as the durability checks
	}

	s.log = s.log.With(slog.String("component", "rabbitmq"), slog.String("queue", s.queue), slog.String("vhost", s.vhost))
	s.pub = &publisher{s: s, sem: make(chan struct{}, 1)}
	s.ready.Store(&readyState{err: fmt.Errorf("rabbitmq: connecting to %s", s.addr)})
	s.runCtx, s.runCancel = context.WithCancel(context.Background())
	return s, nil
}

// Run is the connection loop: it connects, consumes, and reconnects with backoff after a
// connection loss, until Close; cancelling ctx closes the source (Close, within
// adapters.CloseWait). It returns nil; it runs at most once.
func (s *Source) Run(ctx context.Context) error {
	return s.runLoop.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, s.Close), func() error { s.run(); return nil })
}

// urlEncodeHint says how to write reserved characters in the credentials of the URL.
const urlEncodeHint = `special characters in the user name and password must be percent-encoded: # as %23, ? as %3F, / as %2F, @ as %40, : as %3A, % as %25`

// redactURLError keeps the reason of a URL parse error without the URL itself, which
// url.Error embeds verbatim (password included).
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// tlsConfig builds the client TLS configuration; nil means amqp091's default for amqps.
// Check refused tls.enabled with an amqp:// URL.
func tlsConfig(c settings.TLS) (*tls.Config, error) {
	if !c.Enabled {
		return nil, nil
	}
	tc, err := c.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: %w", err)
	}
	return tc, nil
}

// Read returns the next delivery. See adapters.Source.
func (s *Source) Read(ctx context.Context) (*adapters.Delivery, error) {
	select {
	case <-s.closing:
		return nil, adapters.ErrClosed
	default:
	}
	select {
	case d := <-s.out:
		select {
		case <-s.closing:
			// Close raced with the hand-over: drop it unsettled, the channel close
			// requeues it.
			s.inflight.Delete(d)
			return nil, adapters.ErrClosed
		default:
		}
		return d, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closing:
		return nil, adapters.ErrClosed
	}
}

// Ready reports nil while connected and consuming, else the reason. It never blocks.
func (s *Source) Ready() error { return s.ready.Load().err }

// setReady records the state for Ready and the metrics. Serialized, and once Close began
// it records ErrClosed whatever it is given, so a racing "connected" from the connection
// loop never outlives Close.
func (s *Source) setReady(err error) {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	select {
	case <-s.closing:
		err = adapters.ErrClosed
	default:
	}
	s.ready.Store(&readyState{err: err})
	s.events.SetSourceReady(err == nil)
}

// Close stops consuming, flushes settled acknowledgements, and closes the channel and
// connections. Unsettled deliveries return to the queue. It returns ctx.Err() if ctx ended
// first (the connection is then closed without waiting), and adapters.ErrClosed when
// called again.
func (s *Source) Close(ctx context.Context) error {
	first := false
	s.closeOnce.Do(func() { first = true })
	if !first {
		return adapters.ErrClosed
	}
	close(s.closing)
	s.runCancel()
	s.setReady(adapters.ErrClosed)

	var errs []error
	if err := s.runLoop.StopWithin(ctx); err != nil {
		errs = append(errs, fmt.Errorf("rabbitmq: close: waiting for the connection loop: %w", err))
	}
	s.mu.Lock()
	sess := s.cur
	s.cur = nil
	s.mu.Unlock()
	if sess != nil {
		if err := sess.shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.pub.close()
	if len(errs) == 0 {
		s.log.Info("rabbitmq: closed")
	}
	return errors.Join(errs...)
}

func (s *Source) stopping() bool {
	select {
	case <-s.closing:
		return true
	default:
		return s.killed.Load()
	}
}

// sleep waits d, or returns false when the source is closing.
func (s *Source) sleep(d time.Duration, sess *session) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var dead <-chan struct{}
	if sess != nil {
		dead = sess.dead
	}
	select {
	case <-t.C:
		return !s.killed.Load()
	case <-dead:
		return !s.killed.Load()
	case <-s.closing:
		return false
	}
}

// backoff is exponential backoff with jitter; owned by the connection loop.
type backoff struct{ min, max, cur time.Duration }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }

// downLog keeps connection-failure logging to state changes: the first failure and every
// change of cause at warn, repeats at debug, and a reminder at most once a minute.
type downLog struct {
	last     string
	lastWarn time.Time
	since    time.Time
	attempts int
}

func (l *downLog) failed(log *slog.Logger, err error) {
	l.attempts++
	msg := err.Error()
	now := time.Now()
	if l.since.IsZero() {
		l.since = now
	}
	if msg != l.last || now.Sub(l.lastWarn) >= time.Minute {
		log.Warn("rabbitmq: not consuming; retrying", slog.String("error", msg),
			slog.Int("attempts", l.attempts), slog.Duration("down_for", now.Sub(l.since).Round(time.Second)))
		l.last, l.lastWarn = msg, now
		return
	}
	log.Debug("rabbitmq: retry failed", slog.String("error", msg), slog.Int("attempts", l.attempts))
}

func (l *downLog) reset() { *l = downLog{} }

// run is the connection loop: connect, consume until the session dies, back off, repeat.
func (s *Source) run() {
	bo := backoff{min: s.backoffMin, max: s.backoffMax}
	var dl downLog
	for !s.stopping() {
		sess, err := s.connect()
		if err != nil {
			if s.stopping() {
				return
			}
			s.event(EventConnectFailed)
			s.setReady(err)
			dl.failed(s.log, err)
			if !s.sleep(bo.next(), nil) {
				return
			}
			continue
		}
		started := time.Now()
		err = s.serve(sess, &bo, &dl)
		if s.stopping() {
			// Close (or a test kill) owns the session now.
			return
		}
		sess.teardown(s)
		s.event(EventConnectionLost)
		s.setReady(fmt.Errorf("rabbitmq: connection lost: %w", err))
		s.log.Warn("rabbitmq: connection lost; reconnecting", slog.String("error", err.Error()),
			slog.Uint64("generation", sess.gen), slog.Duration("lived", time.Since(started).Round(time.Millisecond)))
		if time.Since(started) > 10*s.backoffMin {
			bo.reset()
		}
		if !s.sleep(bo.next(), nil) {
			return
		}
	}
}

// connect dials, opens the consuming channel and sets basic.qos. The new session becomes
// s.cur.
func (s *Source) connect() (*session, error) {
	conn, err := s.dial(s.runCtx, "mqsidecar consumer "+s.queue)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
		return nil, fmt.Errorf("rabbitmq: open channel: %w", err)
	}
	if err := ch.Qos(s.prefetch, 0, false); err != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
		return nil, fmt.Errorf("rabbitmq: basic.qos prefetch %d: %w", s.prefetch, err)
	}
	sess := newSession(s, s.gen.Add(1), conn, ch)
	s.mu.Lock()
	if s.stopping() {
		s.mu.Unlock()
		sess.teardown(s)
		return nil, errClosing
	}
	s.cur = sess
	s.mu.Unlock()
	return sess, nil
}

// dial opens an AMQP connection. ctx aborts the TCP dial and the handshake. Errors never
// contain the URL.
func (s *Source) dial(ctx context.Context, name string) (*amqp.Connection, error) {
	var (
		mu  sync.Mutex
		raw net.Conn
	)
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	cfg := amqp.Config{
		Heartbeat:  heartbeat,
		Locale:     "en_US",
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := s.dialer(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Heartbeats start after the handshake; until then a deadline guards it.
			// amqp091 clears it once the connection is open.
			if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			mu.Lock()
			raw = c
			mu.Unlock()
			// ctx may have ended before raw was set, when the AfterFunc below found nothing
			// to close: without this check the handshake would wait out its deadline.
			if err := ctx.Err(); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		},
	}
	if s.tlsConfig != nil {
		cfg.TLSClientConfig = s.tlsConfig.Clone()
	}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if raw != nil {
			_ = raw.Close()
		}
	})
	conn, err := amqp.DialConfig(s.url, cfg)
	if !stop() {
		// ctx ended during or right after the handshake.
		if err == nil {
			_ = conn.Close()
		}
		return nil, fmt.Errorf("rabbitmq: connect to %s: %w", s.addr, ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: connect to %s (vhost %q, user %q): %w", s.addr, s.vhost, s.user, redactURLError(err))
	}
	return conn, nil
}

// serve consumes on sess until the session dies or the source closes. A consumer cancelled
// by the broker is re-established on the same channel, so deliveries already handed out
// can still be acknowledged.
func (s *Source) serve(sess *session, bo *backoff, dl *downLog) error {
	for {
		deliveries, err := s.consume(sess)
		if err != nil {
			if sess.isDead() || s.stopping() {
				return errors.Join(err, sess.err())
			}
			s.event(EventConnectFailed)
			s.setReady(err)
			dl.failed(s.log, err)
			if !s.sleep(bo.next(), sess) {
				return errClosing
			}
			if sess.isDead() {
				return sess.err()
			}
			continue
		}
		s.setReady(nil)
		s.event(EventConnected)
		s.log.Info("rabbitmq: consuming", slog.String("addr", s.addr), slog.Int("prefetch", s.prefetch),
			slog.Uint64("generation", sess.gen), slog.Int("failed_attempts", dl.attempts))
		dl.reset()
		err = s.pump(sess, deliveries)
		if !errors.Is(err, errConsumerCancelled) {
			return err
		}
		s.event(EventConsumerCancelled)
		s.setReady(fmt.Errorf("rabbitmq: %w", err))
		s.log.Warn("rabbitmq: consumer cancelled by the broker (queue deleted or node failover); re-subscribing",
			slog.Uint64("generation", sess.gen))
		if !s.sleep(bo.next(), sess) {
			return errClosing
		}
	}
}

// consume checks (or declares) the queue and starts consuming on sess's channel.
func (s *Source) consume(sess *session) (<-chan amqp.Delivery, error) {
	if err := s.checkQueue(sess.conn); err != nil {
		return nil, err
	}
	s.checkDeadLetterExchange(sess.conn)
	tag := fmt.Sprintf("mqsidecar-%d-%d-%s", os.Getpid(), sess.gen, randHex(4))
	sess.cancelled.Store(false)
	deliveries, err := sess.ch.Consume(s.queue, tag, false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: consume %q: %w", s.queue, err)
	}
	sess.setTag(tag)
	return deliveries, nil
}

// checkQueue verifies that the queue exists, on a throwaway channel (a failed passive
// declare closes its channel), and declares it durable when missing and declare is on.
func (s *Source) checkQueue(conn *amqp.Connection) error {
	err := onThrowaway(conn, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(s.queue, true, false, false, false, nil)
		return err
	})
	var ae *amqp.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && ae.Code == amqp.NotFound && s.declare:
		err = onThrowaway(conn, func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(s.queue, true, false, false, false, nil)
			return err
		})
		if err != nil {
			return fmt.Errorf("rabbitmq: declare queue %q on vhost %q: %w", s.queue, s.vhost, err)
		}
		s.log.Info("rabbitmq: declared queue (durable)")
		return nil
	case errors.As(err, &ae) && ae.Code == amqp.NotFound:
		return fmt.Errorf("rabbitmq: queue %q does not exist on vhost %q (set source.rabbitmq.declare: true to create it): %w",
			s.queue, s.vhost, ErrQueueNotFound)
	case errors.As(err, &ae) && ae.Code == amqp.AccessRefused:
		return fmt.Errorf("rabbitmq: queue %q on vhost %q: access refused for user %q: %w", s.queue, s.vhost, s.user, err)
	default:
		return fmt.Errorf("rabbitmq: check queue %q on vhost %q: %w", s.queue, s.vhost, err)
	}
}

// checkDeadLetterExchange warns (it does not stop consuming) when the dead-letter exchange
// of publish mode does not exist, so the operator learns before the first dead letter.
func (s *Source) checkDeadLetterExchange(conn *amqp.Connection) {
	if s.dl.mode != modePublish || s.dl.exchange == "" {
		return
	}
	err := onThrowaway(conn, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclarePassive(s.dl.exchange, "direct", true, false, false, false, nil)
	})
	if err != nil {
		s.log.Error("rabbitmq: dead-letter exchange is not usable; dead-lettering will fail until it exists",
			slog.String("exchange", s.dl.exchange), slog.String("error", err.Error()))
	}
}

// onThrowaway runs f on a fresh channel and closes it.
func onThrowaway(conn *amqp.Connection, f func(*amqp.Channel) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	err = f(ch)
	_ = ch.Close() // already closed when f failed with a channel error
	return err
}

// pump hands deliveries to Read until the session dies, the consumer is cancelled, or the
// source closes. A delivery that was converted but not handed out stays unacknowledged;
// the broker requeues it when the channel closes.
func (s *Source) pump(sess *session, deliveries <-chan amqp.Delivery) error {
	for {
		select {
		case m, ok := <-deliveries:
			if !ok {
				// amqp091 closes the delivery channel when the consumer is cancelled
				// (after handing out what it had buffered) and when the channel closes.
				if sess.ch.IsClosed() || sess.isDead() {
					select {
					case <-sess.dead:
					case <-s.closing:
						return errClosing
					}
					return sess.err()
				}
				return errConsumerCancelled
			}
			d := s.newDelivery(sess, &m)
			select {
			case s.out <- d:
			case <-sess.dead:
				s.inflight.Delete(d)
				return sess.err()
			case <-s.closing:
				s.inflight.Delete(d)
				return errClosing
			}
		case <-sess.dead:
			return sess.err()
		case <-s.closing:
			return errClosing
		}
	}
}

// kill abandons the source as kill -9 would (tests only): nothing more is acknowledged,
// no reconnect happens, and the connections are cut by closing their sockets via cut.
func (s *Source) kill(cut func()) {
	s.killed.Store(true)
	cut()
}
