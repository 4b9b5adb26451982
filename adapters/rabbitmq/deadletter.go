package rabbitmq

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
)

type dlMode int

const (
	modeNone    dlMode = iota // no target: DeadLetter answers ErrNoDeadLetter
	modePublish               // publish a copy with confirms
	modeNack                  // basic.nack(requeue=false) into the queue's own DLX
)

type deadLetterTarget struct {
	mode       dlMode
	exchange   string
	routingKey string
}

func (t deadLetterTarget) String() string {
	switch t.mode {
	case modePublish:
		return fmt.Sprintf("exchange %q routing key %q", t.exchange, t.routingKey)
	case modeNack:
		return "the queue's dead-letter exchange (nack)"
	default:
		return "none"
	}
}

// parseDeadLetter validates dead_letter_mode and the target "exchange[/routing-key]".
func parseDeadLetter(mode, target, queue string) (deadLetterTarget, error) {
	switch mode {
	case "nack":
		return deadLetterTarget{mode: modeNack}, nil
	case "", "publish":
	default:
		return deadLetterTarget{}, fmt.Errorf("rabbitmq: dead_letter_mode: must be \"publish\" or \"nack\", got %q", mode)
	}
	if target == "" {
		return deadLetterTarget{mode: modeNone}, nil
	}
	t := deadLetterTarget{mode: modePublish, exchange: target, routingKey: queue}
	if i := strings.IndexByte(target, '/'); i >= 0 {
		t.exchange, t.routingKey = target[:i], target[i+1:]
	}
	bad := func(why string) error {
		return fmt.Errorf("rabbitmq: delivery.dead_letter.target %q: %s (want \"exchange\", \"exchange/routing-key\" or \"/queue\" for the default exchange)", target, why)
	}
	switch {
	case t.exchange == "" && t.routingKey == "":
		return deadLetterTarget{}, bad("names neither an exchange nor a routing key")
	case len(t.exchange) > 255:
		return deadLetterTarget{}, bad("exchange name longer than 255 bytes")
	case len(t.routingKey) > 255:
		return deadLetterTarget{}, bad("routing key longer than 255 bytes")
	case strings.ContainsFunc(t.exchange, notPrintable):
		return deadLetterTarget{}, bad("exchange name contains spaces or control characters")
	case strings.ContainsFunc(t.routingKey, unicode.IsControl):
		return deadLetterTarget{}, bad("routing key contains control characters")
	}
	return t, nil
}

func notPrintable(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

// DeadLetter writes d to the dead-letter target and returns nil once the broker confirmed
// it (publish mode) or processed the rejection (nack mode). See the package doc. Safe for
// concurrent use; publishes are serialized on one confirm channel.
func (s *Source) DeadLetter(ctx context.Context, d *adapters.Delivery, f adapters.Failure) error {
	if s.dl.mode == modeNone {
		return adapters.ErrNoDeadLetter
	}
	if s.stopping() {
		return adapters.ErrClosed
	}
	v, ok := s.inflight.Load(d)
	if !ok {
		return fmt.Errorf("rabbitmq: dead-letter %q: not an unsettled delivery of this source", d.ID)
	}
	p := v.(*pending)
	if !p.sess.alive() || p.resolved.Load() {
		s.event(EventDeadLetterFailed)
		return fmt.Errorf("rabbitmq: dead-letter %q: %w", d.ID, ErrStaleDelivery)
	}
	var err error
	if s.dl.mode == modeNack {
		err = s.nackDeadLetter(ctx, d, p)
	} else {
		err = s.pub.publish(ctx, s.dl, s.deadLetterCopy(d, p, f))
		if err != nil {
			err = fmt.Errorf("rabbitmq: dead-letter %q to %s: %w", d.ID, s.dl, err)
		}
	}
	if err != nil {
		s.event(EventDeadLetterFailed)
		return err
	}
	s.event(EventDeadLettered)
	return nil
}

// nackDeadLetter rejects without requeue on the delivery's channel, then waits for a
// basic.qos round trip on that channel: the broker handles a channel's frames in order, so
// qos-ok means the rejection was processed.
func (s *Source) nackDeadLetter(ctx context.Context, d *adapters.Delivery, p *pending) error {
	if !p.resolved.CompareAndSwap(false, true) {
		return fmt.Errorf("rabbitmq: dead-letter %q: already settled", d.ID)
	}
	ss := p.sess
	if !ss.alive() {
		return fmt.Errorf("rabbitmq: dead-letter %q: %w", d.ID, ErrStaleDelivery)
	}
	if err := ss.ch.Nack(p.tag, false, false); err != nil {
		return fmt.Errorf("rabbitmq: dead-letter %q: basic.nack: %w (%w)", d.ID, err, ErrStaleDelivery)
	}
	if err := ss.bounded(ctx, func() error { return ss.ch.Qos(s.prefetch, 0, false) }); err != nil {
		// The nack may or may not have been processed; either way the message is either
		// dead-lettered or requeued by the broker, never lost.
		return fmt.Errorf("rabbitmq: dead-letter %q: waiting for the broker to process the nack: %w", d.ID, err)
	}
	return nil
}

// deadLetterCopy builds the persistent copy: original body, properties and headers, plus
// the failure headers.
func (s *Source) deadLetterCopy(d *adapters.Delivery, p *pending, f adapters.Failure) amqp.Publishing {
	m := p.msg
	headers := make(amqp.Table, len(m.Headers)+12)
	for k, v := range m.Headers {
		headers[k] = v
	}
	for _, h := range adapters.FailureHeaders(d, f) {
		headers[h.Key] = h.Value
	}
	headers["mqsidecar-dlq-queue"] = s.queue
	headers["mqsidecar-dlq-exchange"] = m.Exchange
	headers["mqsidecar-dlq-routing-key"] = m.RoutingKey
	return amqp.Publishing{
		Headers:         headers,
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        m.Priority,
		CorrelationId:   m.CorrelationId,
		ReplyTo:         m.ReplyTo,
		MessageId:       m.MessageId,
		Timestamp:       m.Timestamp,
		Type:            m.Type,
		AppId:           m.AppId,
		Body:            m.Body,
	}
}

// publisher owns the dead-letter connection: separate from the consumer's, so that a
// publishing-side block (resource alarm) never stalls acknowledgements. One publish at a
// time (sem); the publisher itself reads the return and close notifications after each
// publish, which is what makes them attributable: RabbitMQ sends basic.return before the
// basic.ack of a mandatory unroutable message, and amqp091 dispatches them in that order
// into the buffered channels, so after the confirm any return is already waiting. With one
// publish outstanding, the buffers never fill.
type publisher struct {
	s   *Source
	sem chan struct{} // cap 1: serializes publishes

	mu      sync.Mutex // guards the fields below (never held during I/O)
	closed  bool
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error
}

func (p *publisher) publish(ctx context.Context, t deadLetterTarget, msg amqp.Publishing) error {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.sem }()

	ch, returns, closes, err := p.channel(ctx)
	if err != nil {
		return err
	}
	drainReturns(returns)
	ctx, cancel := context.WithTimeout(ctx, p.s.pubTimeout)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, t.exchange, t.routingKey, true, false, msg)
	if err != nil {
		p.reset(ch)
		return fmt.Errorf("publish: %w", err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		// A late confirm or return must not be mistaken for the next publish's.
		p.reset(ch)
		return fmt.Errorf("waiting for the broker's confirm: %w", err)
	}
	select {
	case r, ok := <-returns:
		if ok {
			return fmt.Errorf("%w: returned as unroutable: %d %s", ErrNotConfirmed, r.ReplyCode, r.ReplyText)
		}
	default:
	}
	if !acked {
		reason := "broker nacked it"
		select {
		case e, ok := <-closes:
			if ok && e != nil {
				reason = "channel closed: " + e.Error()
			} else {
				reason = "channel closed"
			}
		default:
			if ch.IsClosed() {
				reason = "channel closed"
			}
		}
		p.reset(ch)
		return fmt.Errorf("%w: %s", ErrNotConfirmed, reason)
	}
	return nil
}

func drainReturns(returns chan amqp.Return) {
	for {
		select {
		case _, ok := <-returns:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// channel returns the open confirm channel, dialling when needed. Called under sem.
func (p *publisher) channel(ctx context.Context) (*amqp.Channel, chan amqp.Return, chan *amqp.Error, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, nil, adapters.ErrClosed
	}
	if p.ch != nil && !p.ch.IsClosed() && !p.conn.IsClosed() {
		defer p.mu.Unlock()
		return p.ch, p.returns, p.closes, nil
	}
	old := p.conn
	p.conn, p.ch = nil, nil
	p.mu.Unlock()
	if old != nil {
		_ = old.CloseDeadline(time.Now().Add(closeGrace))
	}

	// Abort the dial when the source closes, too.
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.s.runCtx, cancel)
	defer stop()
	conn, err := p.s.dial(dctx, "mqsidecar dead-letter "+p.s.queue)
	if err != nil {
		return nil, nil, nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
		return nil, nil, nil, fmt.Errorf("open confirm channel: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 4))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
		return nil, nil, nil, adapters.ErrClosed
	}
	p.conn, p.ch, p.returns, p.closes = conn, ch, returns, closes
	p.mu.Unlock()
	p.s.log.Info("rabbitmq: dead-letter connection open", slog.String("target", p.s.dl.String()))
	return ch, returns, closes, nil
}

// reset drops the confirm channel's connection after an uncertain publish; the next
// publish dials afresh. Called under sem.
func (p *publisher) reset(ch *amqp.Channel) {
	p.mu.Lock()
	conn := p.conn
	if p.ch != ch {
		conn = nil
	} else {
		p.conn, p.ch = nil, nil
	}
	p.mu.Unlock()
	if conn != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
	}
}

// close closes the dead-letter connection; a publish in progress fails.
func (p *publisher) close() {
	p.mu.Lock()
	p.closed = true
	conn := p.conn
	p.conn, p.ch = nil, nil
	p.mu.Unlock()
	if conn != nil {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
	}
}
