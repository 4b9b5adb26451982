package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	rmqerrors "github.com/apache/rocketmq-client-go/v2/errors"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Publisher is the RocketMQ producer side (adapters.Publisher); see "Publishing" in the
// package doc. Create it with NewPublisher.
type Publisher struct {
	cfg      Settings
	log      *slog.Logger
	producer sendProducer
	route    func(topic string, timeout time.Duration) error // the name servers' answer for a topic
	brokers  func(timeout time.Duration) (int, error)        // how many master brokers are registered

	ctx    context.Context
	cancel context.CancelFunc
	loop   lifecycle.Loop
	once   sync.Once

	mu      sync.Mutex // guards the fields below
	started bool
	closed  bool
	down    error                // why the producer is not started
	known   map[string]time.Time // topic → when the name servers last routed it
	routed  map[string]bool      // topics the name servers routed at least once
	failed  map[string]routeFailure
}

// routeFailure is a topic check's failure, answered again without asking for routeRetry.
type routeFailure struct {
	err error
	at  time.Time
}

// sendProducer is the part of the client's producer the publisher uses.
type sendProducer interface {
	Start() error
	Shutdown() error
	SendSync(ctx context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error)
}

const (
	// noAutoCreateTopic is the producer's CreateTopicKey: a topic that does not exist, so
	// neither the client (which would take the route of the key topic, TBW102 by default,
	// for an unknown topic) nor a broker with autoCreateTopicEnable creates a topic on a send.
	noAutoCreateTopic = "MQSIDECAR_NO_AUTO_CREATE"
	// routeTTL is how long a topic the name servers routed is sent to without asking again.
	routeTTL = 30 * time.Second
	// routeRetry is how long a failed topic check is answered again without asking the name
	// servers: clients retrying fast while a broker restarts would otherwise flood them.
	routeRetry = time.Second
	// routeTimeout bounds one route request.
	routeTimeout = 3 * time.Second
	// sendTimeout bounds one send when the request's context has no earlier deadline.
	sendTimeout = 30 * time.Second
)

// NewPublisher returns the publisher for the cluster of cfg (the source's name servers,
// namespace and credentials; producer group cfg.PublishGroup, by default
// "<group>-mqsidecar-publish"). It checks cfg as New does, touches no network and starts no
// goroutine: Run starts the producer.
func NewPublisher(cfg Settings, opts ...Option) (*Publisher, error) {
	o := options{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	var ck settings.Checker
	if cfg.Check(&ck, ""); len(ck.Problems) > 0 {
		return nil, ck.Err("rocketmq")
	}
	installLogBridge(o.log)
	group := cfg.PublishGroup
	if group == "" {
		group = cfg.Group + "-mqsidecar-publish"
	}
	popts := []producer.Option{
		producer.WithNsResolver(primitive.NewPassthroughResolver(cfg.Nameservers)),
		producer.WithGroupName(group),
		producer.WithInstanceName(instanceName(cfg.InstanceName) + "-publish"),
		// No retries inside the client: a retry after a send that timed out would hide that
		// the first attempt may be stored (ErrOutcomeUnknown, not ErrUnavailable). The app
		// retries with the same ID instead; the consumer side dedups by it.
		producer.WithRetry(0),
		producer.WithSendMsgTimeout(sendTimeout),
		producer.WithCreateTopicKey(noAutoCreateTopic),
	}
	if cfg.Namespace != "" {
		popts = append(popts, producer.WithNamespace(cfg.Namespace))
	}
	if creds := credentials(cfg); !creds.IsEmpty() {
		popts = append(popts, producer.WithCredentials(creds))
	}
	prod, err := rmq.NewProducer(popts...)
	if err != nil {
		return nil, fmt.Errorf("rocketmq: new publish producer: %w", err)
	}
	p := newPublisher(cfg, o.log, prod)
	return p, nil
}

func newPublisher(cfg Settings, log *slog.Logger, prod sendProducer) *Publisher {
	p := &Publisher{
		cfg: cfg, log: log, producer: prod,
		route:   func(topic string, timeout time.Duration) error { return probeRoute(cfg.Nameservers, topic, timeout) },
		brokers: func(timeout time.Duration) (int, error) { return registeredBrokers(cfg.Nameservers, timeout) },
		down:    errors.New("not started yet"),
		known:   map[string]time.Time{},
		routed:  map[string]bool{},
		failed:  map[string]routeFailure{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// Run starts the producer (retrying a failed start, 1 s doubling to 30 s) and keeps it
// until ctx ends or Close.
func (p *Publisher) Run(ctx context.Context) error {
	return p.loop.Run(ctx, lifecycle.CloseWithin(adapters.CloseWait, p.Close), func() error {
		for wait := startBackoffMin; ; wait = min(2*wait, startBackoffMax) {
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				return nil
			}
			err := p.producer.Start()
			if err == nil {
				p.started, p.down = true, nil
			} else {
				p.down = fmt.Errorf("rocketmq: start the publish producer: %w", err)
			}
			p.mu.Unlock()
			if err == nil {
				p.log.Info("rocketmq: publish producer started")
				<-p.ctx.Done()
				return nil
			}
			p.log.Warn("rocketmq: publish producer did not start; retrying", slog.String("error", err.Error()), slog.Duration("retry_in", wait))
			select {
			case <-p.ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
	})
}

// Close implements adapters.Publisher: it shuts the producer down; sends in flight fail.
func (p *Publisher) Close(ctx context.Context) error {
	first := false
	p.once.Do(func() { first = true })
	if !first {
		return adapters.ErrClosed
	}
	p.cancel()
	p.mu.Lock()
	p.closed = true
	started := p.started
	p.started, p.down = false, adapters.ErrClosed
	p.mu.Unlock()
	var errs []error
	if err := p.loop.StopWithin(ctx); err != nil {
		errs = append(errs, fmt.Errorf("rocketmq: publisher close: %w", err))
	}
	if started {
		if err := p.producer.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("rocketmq: publisher close: producer shutdown: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Publish implements adapters.Publisher: a synchronous send; nil only for SEND_OK.
func (p *Publisher) Publish(ctx context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	msg, err := p.message(m)
	if err != nil {
		return adapters.Receipt{}, err
	}
	fail := func(err error) (adapters.Receipt, error) {
		return adapters.Receipt{}, fmt.Errorf("rocketmq: publish %q to topic %q: %w", m.ID, m.Topic, err)
	}
	if err := ctx.Err(); err != nil {
		return fail(fmt.Errorf("not sent, the request ended: %w (%w)", err, adapters.ErrUnavailable))
	}
	p.mu.Lock()
	started, down := p.started, p.down
	p.mu.Unlock()
	if !started {
		return fail(fmt.Errorf("%w (%w)", down, adapters.ErrUnavailable))
	}
	if err := p.checkTopic(ctx, m.Topic); err != nil {
		return fail(err)
	}
	res, err := p.producer.SendSync(ctx, msg)
	if err != nil {
		err = classifySend(err)
		if errors.Is(err, adapters.ErrUnknownTopic) {
			p.forget(m.Topic)
		}
		return fail(err)
	}
	if err := sendResultErr(res); err != nil {
		return fail(err)
	}
	r := adapters.Receipt{
		Broker: "rocketmq", Topic: m.Topic, ID: m.ID, BrokerMessageID: res.OffsetMsgID,
		Durability: []string{"sync-send", "SEND_OK"},
	}
	if res.MessageQueue != nil {
		q, off := int32(res.MessageQueue.QueueId), res.QueueOffset
		r.Partition, r.Offset = &q, &off
	}
	return r, nil
}

// sendResultErr is nil for SEND_OK only. The other statuses mean the broker stored the
// message without the durability it was configured to confirm (a SYNC_FLUSH disk flush or
// a SYNC_MASTER replica did not answer in time, or no replica is available).
func sendResultErr(res *primitive.SendResult) error {
	if res == nil {
		return fmt.Errorf("no send result: %w", adapters.ErrOutcomeUnknown)
	}
	if res.Status == primitive.SendOK {
		return nil
	}
	return fmt.Errorf("the broker answered %s: stored, durability not confirmed: %w", sendStatus(res.Status), adapters.ErrOutcomeUnknown)
}

// Response codes of a refused send (RocketMQ's ResponseCode) the publisher tells apart.
const (
	resSystemBusy          = 2
	resServiceNotAvailable = 14
	resTopicNotExistSend   = 17
)

// classifySend maps an error of SendSync. The client fails a request it sent only by its
// timeout (it does not fail waiting requests when a connection drops), so a timeout is
// the one error after which the message may be stored; the others come before the send
// left (no route, no connection, a failed write of the frame) or are the broker's refusal.
func classifySend(err error) error {
	if errors.Is(err, rmqerrors.ErrRequestTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from the broker: %w (%w)", err, adapters.ErrOutcomeUnknown)
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "CODE: "); ok {
		codeText, _, _ := strings.Cut(rest, ",")
		code, _ := strconv.Atoi(strings.TrimSpace(codeText))
		switch code {
		case resTopicNotExistSend:
			return fmt.Errorf("%w: the broker answered %s", adapters.ErrUnknownTopic, msg)
		case resSystemBusy, resServiceNotAvailable:
			return fmt.Errorf("the broker is busy or not available, not stored: %s (%w)", msg, adapters.ErrUnavailable)
		default:
			return fmt.Errorf("the broker refused the message: %s: %w", msg, adapters.ErrRejected)
		}
	}
	return fmt.Errorf("not sent: %w (%w)", err, adapters.ErrUnavailable)
}

// checkTopic asks the name servers whether topic exists, unless they routed it within
// routeTTL: an unknown topic is ErrUnknownTopic, unreachable name servers ErrUnavailable.
func (p *Publisher) checkTopic(ctx context.Context, topic string) error {
	p.mu.Lock()
	at, ok := p.known[topic]
	f, failed := p.failed[topic]
	p.mu.Unlock()
	switch {
	case ok && time.Since(at) < routeTTL:
		return nil
	case failed && time.Since(f.at) < routeRetry:
		return f.err
	}
	err := p.askRoute(ctx, topic)
	p.mu.Lock()
	if err != nil {
		p.failed[topic] = routeFailure{err: err, at: time.Now()}
	} else {
		delete(p.failed, topic)
	}
	p.mu.Unlock()
	return err
}

// askRoute asks the name servers for the route of topic; see checkTopic.
func (p *Publisher) askRoute(ctx context.Context, topic string) error {
	timeout := routeTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	rt := topic
	if p.cfg.Namespace != "" {
		rt = p.cfg.Namespace + "%" + topic
	}
	err := p.route(rt, timeout)
	if err == nil {
		p.mu.Lock()
		p.known[topic], p.routed[topic] = time.Now(), true
		p.mu.Unlock()
		return nil
	}
	if !errors.Is(err, ErrTopicNotExist) || errors.Is(err, ErrNameServerUnreachable) {
		return fmt.Errorf("not sent: %w (%w)", err, adapters.ErrUnavailable)
	}
	// A name server has no route for the topic when it does not exist, and also when none of
	// its brokers is registered (stopped, or restarting): only the first is an unknown topic.
	p.mu.Lock()
	routed := p.routed[topic]
	p.mu.Unlock()
	if routed {
		return fmt.Errorf("not sent: the name servers no longer route topic %q, which they did: its brokers are down or restarting (or it was deleted): %w (%w)", topic, err, adapters.ErrUnavailable)
	}
	switch n, berr := p.brokers(timeout); {
	case berr != nil:
		return fmt.Errorf("not sent: %w; and the registered brokers could not be listed: %w (%w)", err, berr, adapters.ErrUnavailable)
	case n == 0:
		return fmt.Errorf("not sent: no broker is registered with the name servers (down or restarting), so they route no topic: %w (%w)", err, adapters.ErrUnavailable)
	}
	return fmt.Errorf("%w: %v", adapters.ErrUnknownTopic, err)
}

// reqGetBrokerClusterInfo is the name server's GET_BROKER_CLUSTER_INFO request.
const reqGetBrokerClusterInfo = 106

// registeredBrokers counts the master brokers the first answering name server knows.
func registeredBrokers(nameservers []string, timeout time.Duration) (int, error) {
	var errs []error
	for _, ns := range nameservers {
		body, err := remotingCall(ns, reqGetBrokerClusterInfo, nil, timeout)
		if err == nil {
			return len(masterAddrs(body)), nil
		}
		errs = append(errs, fmt.Errorf("name server %s: %w", ns, err))
	}
	return 0, errors.Join(errs...)
}

func (p *Publisher) forget(topic string) {
	p.mu.Lock()
	delete(p.known, topic)
	p.mu.Unlock()
}

// message builds the RocketMQ message: UNIQ_KEY = ID (the consumer side's default ID,
// message_id uniq_key; the client keeps a UNIQ_KEY that is set), KEYS = Key, the headers
// and the content type as user properties. What RocketMQ cannot carry is refused
// (ErrRejected) before anything is sent.
func (p *Publisher) message(m adapters.OutMessage) (*primitive.Message, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("rocketmq: publish %q: %s: %w", m.ID, fmt.Sprintf(format, a...), adapters.ErrRejected)
	}
	switch {
	case m.ID == "":
		return nil, bad("empty message ID")
	case !validTopic(m.Topic):
		return nil, bad("%q is not a valid RocketMQ topic name (1-127 of a-z A-Z 0-9 %% | _ -)", m.Topic)
	case hasSeparator(m.ID) || hasSeparator(m.Key) || hasSeparator(m.ContentType):
		return nil, bad("the message ID, key or content type contains a control character RocketMQ uses as a property separator (\\x01, \\x02)")
	}
	msg := primitive.NewMessage(m.Topic, m.Payload)
	msg.WithProperty(primitive.PropertyUniqueClientMessageIdKeyIndex, m.ID)
	if m.Key != "" {
		msg.WithKeys([]string{m.Key})
	}
	for _, h := range m.Headers {
		switch {
		case h.Key == "" || hasSeparator(h.Key) || hasSeparator(h.Value):
			return nil, bad("header %q: empty name, or a \\x01 or \\x02 in its name or value (RocketMQ's property separators)", h.Key)
		case isSystemProperty(h.Key):
			return nil, bad("header %q is a RocketMQ system property name", h.Key)
		case strings.EqualFold(h.Key, "content-type") && m.ContentType != "":
			continue // the content type below wins
		case h.Value == "":
			continue // RocketMQ cannot carry an empty property value
		}
		msg.WithProperty(h.Key, h.Value)
	}
	if m.ContentType != "" {
		msg.WithProperty("content-type", m.ContentType)
	}
	return msg, nil
}

func hasSeparator(s string) bool { return strings.ContainsAny(s, "\x01\x02") }

var _ adapters.Publisher = (*Publisher)(nil)
