package rocketmq

// Transactional publishing with RocketMQ's own half messages (docs/guarantees.md,
// "Transactions"). Prepare sends a half message through the client's TransactionProducer
// and returns once the broker stored it (SEND_OK; the client rolls back any other
// status); the producer's local-transaction callback then holds the transaction open in
// this process until End delivers the app's decision, which the client sends to the broker
// as END_TRANSACTION (one way: the broker does not confirm it). A decision the broker
// never got, and a half message whose process is gone, are settled by the broker's
// check-back, which Check answers (the transaction manager's outbox, and the app's check
// URL for a message still undecided). The ID is the message's UNIQ_KEY, what the consumer
// side reads by default.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// TxnOptions configure NewTxn.
type TxnOptions struct {
	Nameservers []string
	// Group is the transactional producer group; the broker's check-backs go to a live
	// producer of this group, so every replica of one app uses the same group.
	Group       string
	Namespace   string
	Credentials primitive.Credentials
	// Hold is how long a half message is held open for its decision before it is left to
	// the broker's check-back; <= 0 means 5 minutes.
	Hold time.Duration
	// SendTimeout bounds the half message's send; <= 0 means 10s.
	SendTimeout time.Duration
	// Check answers the broker's check-back for the message ID: "COMMIT", "ROLLBACK" or
	// "UNKNOWN" (set before Run, or with SetCheck).
	Check func(ctx context.Context, id string) string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Txn is the RocketMQ transactional producer.
type Txn struct {
	tp     rmq.TransactionProducer
	o      TxnOptions
	log    *slog.Logger
	mu     sync.Mutex
	held   map[string]*half
	primed map[string]bool
	// started: Run started the producer; pending are the topics Prime got before.
	started bool
	pending []string
	check   func(ctx context.Context, id string) string
	loop    lifecycle.Loop
	closed  chan struct{}
	once    sync.Once
}

// half is one half message in flight in this process.
type half struct {
	stored chan struct{}                        // closed when the broker answered SEND_OK
	decide chan primitive.LocalTransactionState // the decision, once
	done   chan struct{}                        // closed when the send (and its END) returned
	res    *primitive.TransactionSendResult
	err    error
}

// NewTxn validates o and builds the producer; Run starts it.
func NewTxn(o TxnOptions) (*Txn, error) {
	if len(o.Nameservers) == 0 || o.Group == "" {
		return nil, errors.New("rocketmq: transactions need name servers and a producer group")
	}
	if o.Hold <= 0 {
		o.Hold = 5 * time.Minute
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	t := &Txn{o: o, log: o.Logger.With(slog.String("component", "rocketmq-txn")), held: map[string]*half{},
		check: o.Check, closed: make(chan struct{})}
	opts := []producer.Option{
		producer.WithNsResolver(primitive.NewPassthroughResolver(o.Nameservers)),
		producer.WithGroupName(o.Group),
		// One client per process run: a restarted sidecar is a new producer of the group.
		producer.WithInstanceName(fmt.Sprintf("mqsidecar-txn-%d-%d", os.Getpid(), time.Now().UnixNano())),
		producer.WithRetry(2),
		producer.WithSendMsgTimeout(o.SendTimeout),
	}
	if o.Namespace != "" {
		opts = append(opts, producer.WithNamespace(o.Namespace))
	}
	if !o.Credentials.IsEmpty() {
		opts = append(opts, producer.WithCredentials(o.Credentials))
	}
	tp, err := rmq.NewTransactionProducer(t, opts...)
	if err != nil {
		return nil, fmt.Errorf("rocketmq: new transaction producer: %w", err)
	}
	t.tp = tp
	return t, nil
}

// SetCheck installs the check-back's answer (the transaction manager's CheckBack).
func (t *Txn) SetCheck(f func(ctx context.Context, id string) string) {
	t.mu.Lock()
	t.check = f
	t.mu.Unlock()
}

// Run starts the producer and holds it until ctx is done or Close.
func (t *Txn) Run(ctx context.Context) error {
	return t.loop.Run(ctx, func() { _ = t.Close(context.Background()) }, func() error {
		if err := t.tp.Start(); err != nil {
			return fmt.Errorf("rocketmq: start the transaction producer: %w", err)
		}
		t.mu.Lock()
		t.started = true
		pending := t.pending
		t.pending = nil
		t.mu.Unlock()
		for _, topic := range pending {
			t.sendPrime(ctx, topic)
		}
		select {
		case <-ctx.Done():
		case <-t.closed:
		}
		return nil
	})
}

// Close releases the held half messages to the broker's check-back and stops the producer.
func (t *Txn) Close(context.Context) error {
	t.once.Do(func() { close(t.closed) })
	t.loop.Stop(nil)
	return t.tp.Shutdown()
}

func halfMessage(m adapters.OutMessage) *primitive.Message {
	msg := primitive.NewMessage(m.Topic, m.Payload)
	for _, h := range m.Headers {
		msg.WithProperty(h.Key, h.Value)
	}
	if m.ContentType != "" {
		msg.WithProperty("content-type", m.ContentType)
	}
	if m.Key != "" {
		msg.WithKeys([]string{m.Key})
	}
	msg.WithProperty(primitive.PropertyUniqueClientMessageIdKeyIndex, m.ID)
	return msg
}

// Prepare sends m as a half message and returns once the broker stored it (SEND_OK); the
// half message stays open until End, Close, or Hold.
func (t *Txn) Prepare(ctx context.Context, m adapters.OutMessage) error {
	h := &half{stored: make(chan struct{}), decide: make(chan primitive.LocalTransactionState, 1), done: make(chan struct{})}
	t.mu.Lock()
	if _, dup := t.held[m.ID]; dup {
		t.mu.Unlock()
		return fmt.Errorf("%w: a half message of id %q is already in flight", adapters.ErrRejected, m.ID)
	}
	t.held[m.ID] = h
	t.mu.Unlock()
	go func() {
		defer func() {
			t.mu.Lock()
			delete(t.held, m.ID)
			t.mu.Unlock()
			close(h.done)
		}()
		sctx, cancel := context.WithTimeout(context.Background(), t.o.SendTimeout)
		defer cancel()
		h.res, h.err = t.tp.SendMessageInTransaction(sctx, halfMessage(m))
	}()
	select {
	case <-h.stored:
		return nil
	case <-h.done:
		switch {
		case h.err != nil && errors.Is(h.err, context.DeadlineExceeded):
			return fmt.Errorf("%w: half message: %v", adapters.ErrOutcomeUnknown, h.err)
		case h.err != nil:
			return fmt.Errorf("%w: half message: %v", adapters.ErrUnavailable, h.err)
		}
		// Not SEND_OK: the client rolled the half message back.
		return fmt.Errorf("%w: half message answered %s and was rolled back", adapters.ErrUnavailable, sendStatus(h.res.Status))
	case <-ctx.Done():
		select {
		case h.decide <- primitive.RollbackMessageState: // should it still be stored
		default:
		}
		return fmt.Errorf("%w: half message: %v", adapters.ErrOutcomeUnknown, ctx.Err())
	}
}

// End delivers the decision for the half message of id held here and returns, for a
// commit, its receipt. held is false when this process holds no half message of id open
// (sent by an earlier process, or held past TxnOptions.Hold): the broker's check-back
// settles that one.
func (t *Txn) End(ctx context.Context, id string, commit bool) (r adapters.Receipt, held bool, err error) {
	t.mu.Lock()
	h := t.held[id]
	t.mu.Unlock()
	if h == nil {
		return adapters.Receipt{}, false, nil
	}
	want := primitive.RollbackMessageState
	if commit {
		want = primitive.CommitMessageState
	}
	select {
	case h.decide <- want:
	default:
		return adapters.Receipt{}, false, nil // released already
	}
	select {
	case <-h.done:
	case <-ctx.Done():
		return adapters.Receipt{}, true, fmt.Errorf("%w: ending the half message: %v", adapters.ErrOutcomeUnknown, ctx.Err())
	}
	if h.err != nil || h.res == nil || h.res.State != want {
		return adapters.Receipt{}, false, nil
	}
	r = adapters.Receipt{Broker: "rocketmq", Topic: "", ID: id, BrokerMessageID: h.res.OffsetMsgID,
		Durability: []string{"SEND_OK", "half-message", "end-oneway"}}
	if h.res.MessageQueue != nil {
		q, off := int32(h.res.MessageQueue.QueueId), h.res.QueueOffset
		r.Topic, r.Partition, r.Offset = h.res.MessageQueue.Topic, &q, &off
	}
	return r, true, nil
}

// primeProperty marks Prime's half message, which is always rolled back.
const primeProperty = "MQSIDECAR_PRIME"

// Prime makes the broker of topic send its check-backs to this process: the client
// registers its producer group (heartbeat) only with the brokers it knows a route to, 1 s
// after it starts and then every 30 s, and a restarted sidecar that holds no half message
// knows none. It sends a half message of its own to topic and rolls it back (consumers
// never see it), once per topic; before Run started the producer, it is queued and sent
// right after the start, ahead of the first heartbeat.
func (t *Txn) Prime(ctx context.Context, topic string) {
	t.mu.Lock()
	if t.primed == nil {
		t.primed = map[string]bool{}
	}
	if t.primed[topic] {
		t.mu.Unlock()
		return
	}
	t.primed[topic] = true
	if !t.started {
		t.pending = append(t.pending, topic)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	t.sendPrime(ctx, topic)
}

func (t *Txn) sendPrime(ctx context.Context, topic string) {
	msg := primitive.NewMessage(topic, []byte("prime"))
	msg.WithProperty(primeProperty, "1")
	ctx, cancel := context.WithTimeout(ctx, t.o.SendTimeout)
	defer cancel()
	if _, err := t.tp.SendMessageInTransaction(ctx, msg); err != nil {
		t.mu.Lock()
		delete(t.primed, topic) // the next Prime tries again
		t.mu.Unlock()
		t.log.Warn("priming the broker route for check-backs failed", slog.String("topic", topic), slog.Any("error", err))
	}
}

// Holds reports whether this process holds the half message of id open.
func (t *Txn) Holds(id string) bool {
	t.mu.Lock()
	h := t.held[id]
	t.mu.Unlock()
	if h == nil {
		return false
	}
	select {
	case <-h.stored:
	default:
		return false // not stored (yet)
	}
	return len(h.decide) == 0
}

// ExecuteLocalTransaction is the client's callback after SEND_OK: it reports the half
// message stored and waits for the decision (primitive.TransactionListener).
func (t *Txn) ExecuteLocalTransaction(msg *primitive.Message) primitive.LocalTransactionState {
	id := msg.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex)
	t.mu.Lock()
	h := t.held[id]
	t.mu.Unlock()
	if h == nil {
		if msg.GetProperty(primeProperty) != "" {
			return primitive.RollbackMessageState
		}
		return primitive.UnkonwnState
	}
	close(h.stored)
	hold := time.NewTimer(t.o.Hold)
	defer hold.Stop()
	select {
	case s := <-h.decide:
		return s
	case <-hold.C:
	case <-t.closed:
	}
	select { // a decision racing the release wins
	case s := <-h.decide:
		return s
	default:
		h.decide <- primitive.UnkonwnState // End now answers held=false
		return primitive.UnkonwnState
	}
}

// CheckLocalTransaction answers the broker's check-back (primitive.TransactionListener).
func (t *Txn) CheckLocalTransaction(msg *primitive.MessageExt) primitive.LocalTransactionState {
	if msg.GetProperty(primeProperty) != "" {
		return primitive.RollbackMessageState
	}
	id := msg.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex)
	t.mu.Lock()
	f := t.check
	t.mu.Unlock()
	if f == nil || id == "" {
		return primitive.UnkonwnState
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	answer := strings.ToUpper(f(ctx, id))
	t.log.Info("broker check-back answered", slog.String("id", id), slog.String("answer", answer))
	switch answer {
	case "COMMIT":
		return primitive.CommitMessageState
	case "ROLLBACK":
		return primitive.RollbackMessageState
	}
	return primitive.UnkonwnState
}

// TxnOptionsFor returns the options for the source's connection settings: the same name
// servers, namespace and credentials; the producer group is the source's group with
// "-mqsidecar-txn" appended, the same on every replica.
func TxnOptionsFor(cfg Settings) TxnOptions {
	return TxnOptions{Nameservers: cfg.Nameservers, Group: cfg.Group + "-mqsidecar-txn", Namespace: cfg.Namespace,
		Credentials: credentials(cfg)}
}
