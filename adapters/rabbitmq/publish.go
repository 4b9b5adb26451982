package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// Publisher is the RabbitMQ producer side (adapters.Publisher); see "Publishing" in the
// package doc. Create it with NewPublisher.
type Publisher struct {
	src      *Source // the connection settings and dial of the source; its loop never runs
	channels int
	log      *slog.Logger

	slots   chan struct{} // cap channels: one publish per confirm channel at a time
	ctx     context.Context
	cancel  context.CancelFunc // Close: aborts dials and waits
	loop    lifecycle.Loop
	closeMu sync.Once

	mu     sync.Mutex // guards the fields below; never held during I/O
	closed bool
	conn   *amqp.Connection
	down   error             // why conn is nil
	block  string            // the broker's reason while it blocks publishing on conn, else ""
	idle   []*confirmChannel // open confirm channels of conn not in use
}

// confirmChannel is one channel in confirm mode with its return and close notifications.
// It carries one publish at a time, so a basic.return on it belongs to that publish.
type confirmChannel struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error
}

// errNotConnected is the reason before Run connected.
var errNotConnected = errors.New("not connected yet")

// NewPublisher returns the publisher for the broker of cfg (the source's URL and TLS
// settings; cfg.PublishChannels confirm channels). It checks cfg as New does, touches no
// network and starts no goroutine: Run connects.
func NewPublisher(cfg Settings, opts ...Option) (*Publisher, error) {
	src, err := New(cfg, "", opts...)
	if err != nil {
		return nil, err
	}
	src.runCancel() // the source's loop never runs; only its dial is used
	p := &Publisher{
		src:      src,
		channels: cfg.PublishChannels,
		log:      src.log,
		slots:    make(chan struct{}, cfg.PublishChannels),
		down:     errNotConnected,
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Run connects and reconnects (with the source's backoff) until ctx ends or Close.
func (p *Publisher) Run(ctx context.Context) error {
	return p.loop.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, p.Close), func() error { p.run(); return nil })
}

func (p *Publisher) run() {
	bo := backoff{min: p.src.backoffMin, max: p.src.backoffMax}
	var dl downLog
	for p.ctx.Err() == nil {
		conn, err := p.src.dial(p.ctx, "mqsidecar publisher")
		if err != nil {
			p.setDown(nil, err)
			dl.failed(p.log, err)
			if !p.sleep(bo.next()) {
				return
			}
			continue
		}
		lost := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
		if !p.setConn(conn) {
			_ = conn.CloseDeadline(time.Now().Add(closeGrace))
			return
		}
		p.log.Info("rabbitmq: publisher connected", slog.String("addr", p.src.addr), slog.Int("failed_attempts", dl.attempts))
		dl.reset()
		started := time.Now()
		if !p.serve(conn, lost, blocked) {
			return // Close closes the connection
		}
		if time.Since(started) > 10*p.src.backoffMin {
			bo.reset()
		}
		if !p.sleep(bo.next()) {
			return
		}
	}
}

// serve follows conn until it is lost (true) or Close (false). While the broker blocks
// publishing on it (connection.blocked: a memory or disk alarm), publishes fail at once
// with ErrUnavailable instead of waiting for a confirm that cannot come.
func (p *Publisher) serve(conn *amqp.Connection, lost <-chan *amqp.Error, blocked <-chan amqp.Blocking) bool {
	for {
		select {
		case <-p.ctx.Done():
			return false
		case b, ok := <-blocked:
			if !ok {
				blocked = nil // closed with the connection; lost says so
				continue
			}
			reason := ""
			if b.Active {
				reason = b.Reason
				if reason == "" {
					reason = "blocked"
				}
				p.log.Warn("rabbitmq: the broker blocks publishing", slog.String("reason", reason))
			} else {
				p.log.Info("rabbitmq: the broker unblocked publishing")
			}
			p.mu.Lock()
			if p.conn == conn {
				p.block = reason
			}
			p.mu.Unlock()
		case e := <-lost:
			err := errors.New("connection closed")
			if e != nil {
				err = e
			}
			p.setDown(conn, fmt.Errorf("rabbitmq: publisher connection to %s lost: %w", p.src.addr, err))
			p.log.Warn("rabbitmq: publisher connection lost; reconnecting", slog.String("error", err.Error()))
			return true
		}
	}
}

func (p *Publisher) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.ctx.Done():
		return false
	}
}

// setConn makes conn the connection; false when Close came first.
func (p *Publisher) setConn(conn *amqp.Connection) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conn, p.down, p.idle, p.block = conn, nil, nil, ""
	return true
}

// setDown records why there is no connection; old (when not nil) is dropped only if it is
// still the current one.
func (p *Publisher) setDown(old *amqp.Connection, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old != nil && p.conn != old {
		return
	}
	p.conn, p.down, p.idle, p.block = nil, err, nil, ""
}

// Publish implements adapters.Publisher: a persistent, mandatory publish on a confirm
// channel; nil only for a broker ack without a basic.return.
func (p *Publisher) Publish(ctx context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	if err := checkOut(m); err != nil {
		return adapters.Receipt{}, err
	}
	if err := ctx.Err(); err != nil {
		return adapters.Receipt{}, fmt.Errorf("rabbitmq: publish %q: not sent, the request ended: %w (%w)", m.ID, err, adapters.ErrUnavailable)
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return adapters.Receipt{}, fmt.Errorf("rabbitmq: publish %q: not sent, all %d confirm channels stayed busy: %w (%w)", m.ID, p.channels, ctx.Err(), adapters.ErrUnavailable)
	}
	defer func() { <-p.slots }()

	cc, err := p.take(ctx)
	if err != nil {
		return adapters.Receipt{}, fmt.Errorf("rabbitmq: publish %q: %w (%w)", m.ID, err, adapters.ErrUnavailable)
	}
	err = p.publish(ctx, cc, m)
	if err != nil {
		return adapters.Receipt{}, fmt.Errorf("rabbitmq: publish %q to exchange %q routing key %q: %w", m.ID, m.Topic, m.RoutingKey, err)
	}
	return adapters.Receipt{
		Broker: "rabbitmq", Topic: m.Topic, RoutingKey: m.RoutingKey, ID: m.ID,
		Durability: []string{"publisher-confirm", "persistent", "mandatory", "routed"},
	}, nil
}

// publish sends on cc and waits for its confirm. cc goes back to the pool when the channel
// is known clean (no confirm or return of this publish can still arrive), else it is closed.
func (p *Publisher) publish(ctx context.Context, cc *confirmChannel, m adapters.OutMessage) error {
	drainReturns(cc.returns)
	dc, err := cc.ch.PublishWithDeferredConfirmWithContext(ctx, m.Topic, m.RoutingKey, true, false, publishing(m))
	if err != nil {
		p.discard(cc)
		if errors.Is(err, amqp.ErrClosed) {
			// amqp091 refuses before writing anything when the channel or connection is closed.
			return fmt.Errorf("not sent: %w (%w)", closeReason(cc, amqp.ErrClosed), adapters.ErrUnavailable)
		}
		return fmt.Errorf("sending: %w (%w)", err, adapters.ErrOutcomeUnknown)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		// A late confirm or return must not be taken for the next publish's.
		p.discard(cc)
		return fmt.Errorf("no confirm before the request ended: %w (%w)", err, adapters.ErrOutcomeUnknown)
	}
	// RabbitMQ sends basic.return before the ack of an unroutable mandatory message, and
	// amqp091 hands them over in that order: after the confirm, a return is already waiting.
	select {
	case r, ok := <-cc.returns:
		if ok {
			p.release(cc)
			return fmt.Errorf("returned by the broker (%d %s): %w", r.ReplyCode, r.ReplyText, adapters.ErrUnroutable)
		}
	default:
	}
	if !acked {
		// A nack, or the channel closed before the confirm (deferred confirmations then
		// resolve as nacks, after the close notification was queued).
		if !cc.ch.IsClosed() {
			p.release(cc)
			return fmt.Errorf("the broker nacked it: %w", adapters.ErrRejected)
		}
		p.discard(cc)
		return classifyClose(closeReason(cc, amqp.ErrClosed))
	}
	p.release(cc)
	return nil
}

// classifyClose maps why the channel closed under a publish to a publish error.
func classifyClose(e *amqp.Error) error {
	switch {
	case e.Code == amqp.NotFound:
		// The exchange does not exist: the broker closed the channel, nothing stored.
		return fmt.Errorf("%w: %v", adapters.ErrUnknownTopic, e)
	case e.Server && (e.Code == amqp.AccessRefused || e.Code == amqp.PreconditionFailed || e.Code == amqp.NotAllowed ||
		e.Code == amqp.ContentTooLarge || e.Code == amqp.SyntaxError || e.Code == amqp.CommandInvalid):
		// A channel exception refusing this publish: not stored.
		return fmt.Errorf("the broker closed the channel: %v: %w", e, adapters.ErrRejected)
	default:
		// The connection went away (or was forced closed) after the message left.
		return fmt.Errorf("channel closed before the confirm: %v: %w", e, adapters.ErrOutcomeUnknown)
	}
}

// closeReason is the close notification of cc, or fallback when none was queued.
func closeReason(cc *confirmChannel, fallback *amqp.Error) *amqp.Error {
	select {
	case e, ok := <-cc.closes:
		if ok && e != nil {
			return e
		}
	default:
	}
	return fallback
}

// publishing builds the AMQP message: persistent, message_id = ID (the consumer side's
// default ID source), the content type, the headers (a later header of one name replaces an
// earlier one: an AMQP table is a map), a timestamp.
func publishing(m adapters.OutMessage) amqp.Publishing {
	var headers amqp.Table
	if len(m.Headers) > 0 {
		headers = make(amqp.Table, len(m.Headers))
		for _, h := range m.Headers {
			headers[h.Key] = h.Value
		}
	}
	return amqp.Publishing{
		Headers:      headers,
		ContentType:  m.ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Timestamp:    time.Now(),
		Body:         m.Payload,
	}
}

// checkOut refuses what AMQP cannot carry (short strings are at most 255 bytes), before
// anything is sent: amqp091 would fail in the middle of writing the frame.
func checkOut(m adapters.OutMessage) error {
	bad := func(what string, n int) error {
		return fmt.Errorf("rabbitmq: publish %q: %s is %d bytes, AMQP allows at most 255: %w", m.ID, what, n, adapters.ErrRejected)
	}
	switch {
	case m.ID == "":
		return fmt.Errorf("rabbitmq: publish: empty message ID: %w", adapters.ErrRejected)
	case len(m.ID) > 255:
		return bad("the message ID", len(m.ID))
	case len(m.Topic) > 255:
		return bad("the exchange name", len(m.Topic))
	case len(m.RoutingKey) > 255:
		return bad("the routing key", len(m.RoutingKey))
	case len(m.ContentType) > 255:
		return bad("the content type", len(m.ContentType))
	}
	for _, h := range m.Headers {
		if len(h.Key) > 255 {
			return bad(fmt.Sprintf("the name of a header (%.32q...)", h.Key), len(h.Key))
		}
	}
	return nil
}

// take returns an idle confirm channel of the current connection or opens one, bounded
// by ctx: opening is a round trip, which a broker that blocks the connection (or hangs)
// does not answer.
func (p *Publisher) take(ctx context.Context) (*confirmChannel, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, adapters.ErrClosed
	}
	conn := p.conn
	if conn == nil {
		err := p.down
		p.mu.Unlock()
		return nil, fmt.Errorf("no connection to %s: %w", p.src.addr, err)
	}
	if p.block != "" {
		reason := p.block
		p.mu.Unlock()
		return nil, fmt.Errorf("the broker %s blocks publishing (connection.blocked: %s; a memory or disk alarm)", p.src.addr, reason)
	}
	for n := len(p.idle); n > 0; n = len(p.idle) {
		cc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if !cc.ch.IsClosed() {
			p.mu.Unlock()
			return cc, nil
		}
	}
	p.mu.Unlock()

	type opened struct {
		cc  *confirmChannel
		err error
	}
	done := make(chan opened, 1)
	go func() {
		ch, err := conn.Channel()
		if err == nil {
			if err = ch.Confirm(false); err != nil {
				_ = ch.Close()
			}
		}
		if err != nil {
			done <- opened{err: err}
			return
		}
		done <- opened{cc: &confirmChannel{
			conn:    conn,
			ch:      ch,
			returns: ch.NotifyReturn(make(chan amqp.Return, 1)),
			closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		}}
	}()
	select {
	case o := <-done:
		if o.err != nil {
			return nil, fmt.Errorf("open a confirm channel on %s: %w", p.src.addr, o.err)
		}
		return o.cc, nil
	case <-ctx.Done():
		go func() { // the broker may still answer: close that channel then
			if o := <-done; o.cc != nil {
				_ = o.cc.ch.Close()
			}
		}()
		return nil, fmt.Errorf("open a confirm channel on %s: no answer before the request ended: %w", p.src.addr, ctx.Err())
	}
}

// release puts cc back into the pool, unless its connection was replaced or it closed.
func (p *Publisher) release(cc *confirmChannel) {
	p.mu.Lock()
	if p.conn == cc.conn && !p.closed && !cc.ch.IsClosed() {
		p.idle = append(p.idle, cc)
		cc = nil
	}
	p.mu.Unlock()
	if cc != nil {
		_ = cc.ch.Close()
	}
}

// discard closes cc: a confirm or return of the last publish may still arrive on it.
func (p *Publisher) discard(cc *confirmChannel) {
	go func() { _ = cc.ch.Close() }() // a round trip; the publish does not wait for it
}

// Close implements adapters.Publisher: it closes the connection; publishes in flight fail
// (ErrOutcomeUnknown for those whose message left), later ones get ErrUnavailable.
func (p *Publisher) Close(ctx context.Context) error {
	first := false
	p.closeMu.Do(func() { first = true })
	if !first {
		return adapters.ErrClosed
	}
	p.cancel()
	p.mu.Lock()
	p.closed = true
	conn := p.conn
	p.conn, p.idle, p.down = nil, nil, adapters.ErrClosed
	p.mu.Unlock()
	if conn != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
	}
	if err := p.loop.StopWithin(ctx); err != nil {
		return fmt.Errorf("rabbitmq: publisher close: %w", err)
	}
	return nil
}

var _ adapters.Publisher = (*Publisher)(nil)
