package publish

// Transactions (issue #14 point 3; docs/guarantees.md, "Transactions"): the app prepares a
// message, does its own database work, then commits or rolls back; the sidecar keeps the
// prepared message in its store (the outbox, dedup.Outbox) and publishes it only on a
// commit decision, through the broker's adapters.Publisher with the publish endpoint's 2xx
// rule. When no decision arrives in time, or after a restart, the checker (Txn.Run) asks
// the app's check URL.
//
//	POST /v1/transactions?topic=T[&routing_key=R]   prepare: 201 {"id","state":"prepared"}
//	POST /v1/transactions/{id}/commit                publish: 200 {"id","state":"committed","receipt"}
//	POST /v1/transactions/{id}/rollback              discard: 200 {"id","state":"rolled_back"}
//	GET  /v1/transactions/{id}                       the record's state
//
// The rules: the prepare's 2xx comes after the outbox write is durable; the message is
// published only from a commit (the app's, or COMMIT from its check URL) and with the ID
// fixed at prepare, so a second publish after a crash is removed by the consumer side's
// dedup; a claim with a lease in the store keeps two resolvers (the commit handler and a
// checker, or two replicas sharing a Redis store) off one record at once.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// TxnOptions configure NewTxn.
type TxnOptions struct {
	// Store is the outbox (the sidecar's dedup store). Required.
	Store dedup.Outbox
	// Publisher publishes committed messages. Required.
	Publisher adapters.Publisher
	// Half, when set, is the broker's own transactional messages (RocketMQ): the prepare
	// also sends a half message, a commit or rollback ends it, and CheckBack answers the
	// broker's check-back. A commit of a half message this process does not hold goes
	// through Publisher (a plain, non-transactional send) once OrphanGrace passed; before
	// that the broker's check-back commits it.
	Half HalfMessages
	// OrphanGrace is how long after its prepare a half message no process holds (its
	// process died) is left to the broker's check-back before the checker asks the app and
	// publishes it through Publisher; keep it below the broker's transactionCheckMax ×
	// transactionCheckInterval, after which the broker drops the half message. <= 0 means
	// 5 minutes.
	OrphanGrace time.Duration
	// CheckURL is the app's check endpoint (publish.transactions.check_url); "" = the
	// checker cannot ask: undecided records wait for the app's commit or rollback.
	CheckURL string
	// Timeout is how long a prepared message waits for commit or rollback before the
	// checker asks (publish.transactions.timeout); <= 0 means 60s.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before asking again after UNKNOWN (or a
	// failed check or publish): MinBackoff doubling per attempt up to MaxBackoff. <= 0
	// mean 1s and 60s.
	MinBackoff, MaxBackoff time.Duration
	// PublishTimeout bounds one publish of a commit; <= 0 means 10s. CheckTimeout bounds
	// one call of the check URL; <= 0 means 5s.
	PublishTimeout, CheckTimeout time.Duration
	// Poll is how often the checker looks for due records; <= 0 means 1s.
	Poll time.Duration
	// MaxPayload bounds a prepare's body; <= 0 means 1 MiB.
	MaxPayload int64
	// Client calls the check URL; nil means a client with CheckTimeout.
	Client *http.Client
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
}

// HalfMessages is a broker's own transactional messages (adapters/rocketmq.Txn).
type HalfMessages interface {
	// Prepare sends m as a half message; nil once the broker stored it.
	Prepare(ctx context.Context, m adapters.OutMessage) error
	// End commits or rolls back the half message of id that this process holds open;
	// held is false when it holds none (the broker's check-back settles that one).
	End(ctx context.Context, id string, commit bool) (r adapters.Receipt, held bool, err error)
	// Holds reports whether this process holds the half message of id open.
	Holds(id string) bool
}

// Durability facts of a half message's receipt; CheckBack commits a half message only
// when the committed record's receipt has durabilityHalf (otherwise the message went out
// by a plain send, and the half message is an orphan to roll back).
const (
	durabilityHalf    = "half-message"
	durabilityByCheck = "committed by the broker's check-back"
)

// Txn is the transaction manager: the HTTP handler of /v1/transactions and the checker.
type Txn struct {
	o     TxnOptions
	log   *slog.Logger
	mux   *http.ServeMux
	lease time.Duration
	owner string
	seq   atomic.Uint64
	loop  lifecycle.Loop
	stop  chan struct{}
	// stopOnce closes stop.
	stopOnce sync.Once
	// endRace: a check-back this soon after a commit is answered UNKNOWN (CheckBack).
	endRace time.Duration
}

// NewTxn validates o; it starts no goroutine (Run runs the checker).
func NewTxn(o TxnOptions) (*Txn, error) {
	if o.Store == nil || o.Publisher == nil {
		return nil, errors.New("publish: transactions need a store and a publisher")
	}
	if o.CheckURL != "" && !strings.HasPrefix(o.CheckURL, "http://") && !strings.HasPrefix(o.CheckURL, "https://") {
		return nil, fmt.Errorf("publish.transactions.check_url: %q is not an http(s) URL", o.CheckURL)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Timeout, 60*time.Second)
	def(&o.MinBackoff, time.Second)
	def(&o.MaxBackoff, 60*time.Second)
	def(&o.PublishTimeout, 10*time.Second)
	def(&o.CheckTimeout, 5*time.Second)
	def(&o.Poll, time.Second)
	def(&o.OrphanGrace, 5*time.Minute)
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = 1 << 20
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.CheckTimeout}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	m := &Txn{
		o:    o,
		log:  o.Logger.With(slog.String("component", "transactions")),
		mux:  http.NewServeMux(),
		stop: make(chan struct{}),
		// A claim covers the longest a resolver holds a record: a check and a publish.
		lease:   o.PublishTimeout + o.CheckTimeout + 5*time.Second,
		owner:   hex.EncodeToString(b[:]),
		endRace: 5 * time.Second,
	}
	m.mux.HandleFunc("POST /v1/transactions", m.prepare)
	m.mux.HandleFunc("POST /v1/transactions/{id}/commit", m.commit)
	m.mux.HandleFunc("POST /v1/transactions/{id}/rollback", m.rollback)
	m.mux.HandleFunc("GET /v1/transactions/{id}", m.get)
	return m, nil
}

// Patterns are the routes ServeHTTP answers, for mounting on the publish listener.
var Patterns = []string{"/v1/transactions", "/v1/transactions/"}

// ServeHTTP serves the routes of Patterns.
func (m *Txn) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.mux.ServeHTTP(w, r) }

// claimOwner is unique per claim, so a resolver whose lease passed to another never
// overwrites the other's work (dedup.Outbox.TxUpdate).
func (m *Txn) claimOwner() string {
	return m.owner + "-" + strconv.FormatUint(m.seq.Add(1), 10)
}

// txView is the JSON of a transaction's answers.
type txView struct {
	ID      string            `json:"id"`
	State   string            `json:"state"`
	Topic   string            `json:"topic,omitempty"`
	Receipt *adapters.Receipt `json:"receipt,omitempty"`
	Error   string            `json:"error,omitempty"`
}

func txError(w http.ResponseWriter, status int, id string, state dedup.TxState, msg string) {
	v := txView{ID: id, Error: msg}
	if state != dedup.TxUnknown {
		v.State = state.String()
	}
	writeJSON(w, status, v)
}

// messageOf maps a prepare request to the message as the publish endpoint maps a publish
// (Server.read): the payload unchanged, the headers by messageHeaders, the ordering key
// from ce-partitionkey, the ID from Idempotency-Key, ce-id, or a new one; the topic (and
// RabbitMQ routing key) from the query.
func messageOf(r *http.Request, body []byte) (adapters.OutMessage, error) {
	q := r.URL.Query()
	m := adapters.OutMessage{
		Topic: q.Get("topic"), RoutingKey: q.Get("routing_key"), Payload: body,
		Key:         r.Header.Get("Ce-Partitionkey"),
		ContentType: r.Header.Get("Content-Type"),
		Headers:     messageHeaders(r.Header),
	}
	if m.Topic == "" {
		return m, errors.New("the topic query parameter is required")
	}
	m.ID = r.Header.Get(HeaderIdempotencyKey)
	if m.ID == "" {
		m.ID = r.Header.Get("Ce-Id")
	}
	if m.ID == "" {
		m.ID = newID()
	}
	if len(m.ID) > MaxKeyLen {
		return m, fmt.Errorf("the transaction id has %d bytes, at most %d are allowed", len(m.ID), MaxKeyLen)
	}
	return m, nil
}

func (m *Txn) prepare(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, m.o.MaxPayload))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			txError(w, http.StatusRequestEntityTooLarge, "", 0, fmt.Sprintf("payload over %d bytes", m.o.MaxPayload))
			return
		}
		txError(w, http.StatusBadRequest, "", 0, "reading the body: "+err.Error())
		return
	}
	msg, err := messageOf(r, body)
	if err != nil {
		txError(w, http.StatusBadRequest, "", 0, err.Error())
		return
	}
	enc, err := json.Marshal(msg)
	if err != nil {
		txError(w, http.StatusInternalServerError, msg.ID, 0, err.Error())
		return
	}
	now := m.o.Now()
	rec := dedup.TxRecord{ID: msg.ID, State: dedup.TxPrepared, Message: enc, Prepared: now, NextCheck: now.Add(m.o.Timeout)}
	old, err := m.o.Store.TxPrepare(r.Context(), rec)
	switch {
	case errors.Is(err, dedup.ErrTxExists):
		// A retried prepare: the same message answers as the first did; another is 422.
		switch {
		case old.State != dedup.TxPrepared:
			txError(w, http.StatusConflict, msg.ID, old.State, "the id is already "+old.State.String())
		case !bytes.Equal(old.Message, enc):
			txError(w, http.StatusUnprocessableEntity, msg.ID, old.State, "the id was prepared with a different message")
		default:
			writeJSON(w, http.StatusOK, txView{ID: msg.ID, State: old.State.String(), Topic: msg.Topic})
		}
		return
	case err != nil:
		txError(w, http.StatusServiceUnavailable, msg.ID, 0, "the outbox did not store the message: "+err.Error())
		return
	}
	if m.o.Half != nil {
		ctx, cancel := context.WithTimeout(r.Context(), m.o.PublishTimeout)
		herr := m.o.Half.Prepare(ctx, msg)
		cancel()
		if herr != nil {
			m.abandon(context.WithoutCancel(r.Context()), msg.ID)
			status, reason := publishStatus(herr)
			txError(w, status, msg.ID, 0, "the half message was not stored: "+reason)
			return
		}
	}
	writeJSON(w, http.StatusCreated, txView{ID: msg.ID, State: rec.State.String(), Topic: msg.Topic})
}

// answer writes a record's state (with its receipt once committed).
func (m *Txn) answer(w http.ResponseWriter, status int, rec dedup.TxRecord) {
	v := txView{ID: rec.ID, State: rec.State.String()}
	if len(rec.Receipt) > 0 {
		var rc adapters.Receipt
		if err := json.Unmarshal(rec.Receipt, &rc); err == nil {
			v.Receipt, v.Topic = &rc, rc.Topic
		}
	}
	writeJSON(w, status, v)
}

func (m *Txn) get(w http.ResponseWriter, r *http.Request) {
	rec, err := m.o.Store.TxGet(r.Context(), r.PathValue("id"))
	if m.storeError(w, r.PathValue("id"), rec, err) {
		return
	}
	m.answer(w, http.StatusOK, rec)
}

// storeError answers a failed store call; it reports whether it did.
func (m *Txn) storeError(w http.ResponseWriter, id string, rec dedup.TxRecord, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, dedup.ErrTxNotFound):
		txError(w, http.StatusNotFound, id, 0, "no transaction with this id")
	case errors.Is(err, dedup.ErrTxClaimed):
		txError(w, http.StatusConflict, id, rec.State, "the transaction is being resolved right now; retry")
	default:
		txError(w, http.StatusServiceUnavailable, id, 0, "outbox: "+err.Error())
	}
	return true
}

// claim claims the record of the request's {id} for a commit or rollback; when it cannot
// (unknown, held elsewhere, the store failing) it answers and returns ok=false.
func (m *Txn) claim(w http.ResponseWriter, r *http.Request) (id, owner string, rec dedup.TxRecord, ok bool) {
	id, owner = r.PathValue("id"), m.claimOwner()
	rec, err := m.o.Store.TxClaim(r.Context(), id, owner, m.lease)
	return id, owner, rec, !m.storeError(w, id, rec, err)
}

func (m *Txn) commit(w http.ResponseWriter, r *http.Request) {
	id, owner, rec, ok := m.claim(w, r)
	if !ok {
		return
	}
	switch rec.State {
	case dedup.TxCommitted:
		m.answer(w, http.StatusOK, rec)
		return
	case dedup.TxRolledBack:
		txError(w, http.StatusConflict, id, rec.State, "the transaction was rolled back")
		return
	}
	// The publish must not end with the client's request: a disconnect after the send
	// left would leave the outcome to the checker, which is fine, but cutting the send
	// short helps nobody.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), m.o.PublishTimeout)
	defer cancel()
	rec, err := m.publish(ctx, owner, rec)
	if err != nil {
		status, reason := publishStatus(err)
		txError(w, status, id, rec.State, reason)
		return
	}
	m.answer(w, http.StatusOK, rec)
}

// publishStatus is the publish endpoint's answer to a publish error (Status), with what
// it means for the commit.
func publishStatus(err error) (int, string) {
	st := Status(err)
	switch st {
	case http.StatusGatewayTimeout:
		return st, "outcome unknown: " + err.Error() + "; the commit stands and is retried with the same id"
	case http.StatusServiceUnavailable:
		return st, err.Error() + "; the commit stands and is retried"
	}
	return st, err.Error()
}

// publish publishes a claimed record and writes the outcome: committed with its receipt,
// or, when the broker did not confirm, committing (the decision stands; the checker
// publishes again, with the same ID, after a backoff). It returns the record as written.
func (m *Txn) publish(ctx context.Context, owner string, rec dedup.TxRecord) (dedup.TxRecord, error) {
	var msg adapters.OutMessage
	if err := json.Unmarshal(rec.Message, &msg); err != nil {
		return rec, fmt.Errorf("transaction %s: undecodable message in the outbox: %w", rec.ID, err)
	}
	var (
		receipt adapters.Receipt
		perr    error
		held    bool
	)
	switch {
	case m.o.Half == nil:
	case m.o.Half.Holds(rec.ID):
		receipt, held, perr = m.o.Half.End(ctx, rec.ID, true)
	case m.orphanInGrace(rec):
		// The half message is on the broker (SEND_OK at prepare) and the decision is now
		// in the outbox: the broker's check-back commits it (CheckBack).
		receipt, held = adapters.Receipt{Broker: "rocketmq", Topic: msg.Topic, ID: rec.ID,
			Durability: []string{"SEND_OK", durabilityHalf, durabilityByCheck}}, true
	}
	if !held {
		receipt, perr = m.o.Publisher.Publish(ctx, msg)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.o.PublishTimeout)
	defer cancel()
	if perr != nil {
		rec.State = dedup.TxCommitting
		rec.NextCheck = m.o.Now().Add(m.backoff(rec.Checks))
		rec.Checks++
		if err := m.o.Store.TxUpdate(wctx, owner, rec); err != nil {
			m.log.Warn("transaction: recording the commit decision failed; the lease expires and the checker resolves it",
				slog.String("id", rec.ID), slog.Any("error", err))
		}
		return rec, perr
	}
	rec.State = dedup.TxCommitted
	rec.Receipt, _ = json.Marshal(receipt)
	if err := m.o.Store.TxUpdate(wctx, owner, rec); err != nil {
		// Published and confirmed: the answer is the receipt. The record stays unresolved,
		// so a checker may publish it once more, with the same ID (a consumer-side dup).
		m.log.Warn("transaction: published, but recording it failed", slog.String("id", rec.ID), slog.Any("error", err))
	}
	return rec, nil
}

func (m *Txn) rollback(w http.ResponseWriter, r *http.Request) {
	id, owner, rec, ok := m.claim(w, r)
	if !ok {
		return
	}
	switch rec.State {
	case dedup.TxRolledBack:
		m.answer(w, http.StatusOK, rec)
		return
	case dedup.TxCommitted:
		txError(w, http.StatusConflict, id, rec.State, "the transaction was committed")
		return
	case dedup.TxCommitting:
		m.release(r.Context(), owner, rec)
		txError(w, http.StatusConflict, id, rec.State, "the transaction was committed; its publish is being retried")
		return
	}
	rec.State = dedup.TxRolledBack
	if err := m.o.Store.TxUpdate(context.WithoutCancel(r.Context()), owner, rec); err != nil {
		txError(w, http.StatusServiceUnavailable, id, dedup.TxPrepared, "outbox: "+err.Error())
		return
	}
	m.endHalf(r.Context(), id)
	m.answer(w, http.StatusOK, rec)
}

// endHalf rolls back the half message of a rolled back transaction, when this process
// holds it; otherwise the broker's check-back reads the rollback from the outbox.
func (m *Txn) endHalf(ctx context.Context, id string) {
	if m.o.Half == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.o.PublishTimeout)
	defer cancel()
	if _, _, err := m.o.Half.End(ctx, id, false); err != nil {
		m.log.Warn("transaction: rolling back the half message failed; the broker's check-back rolls it back",
			slog.String("id", id), slog.Any("error", err))
	}
}

// orphanInGrace reports whether rec's half message is left to the broker's check-back: a
// broker with half messages, none held here, within OrphanGrace of the prepare.
func (m *Txn) orphanInGrace(rec dedup.TxRecord) bool {
	return m.o.Half != nil && !m.o.Half.Holds(rec.ID) && m.o.Now().Before(rec.Prepared.Add(m.o.OrphanGrace))
}

// abandon rolls back a prepared record whose half message was not stored.
func (m *Txn) abandon(ctx context.Context, id string) {
	owner := m.claimOwner()
	rec, err := m.o.Store.TxClaim(ctx, id, owner, m.lease)
	if err == nil && rec.State == dedup.TxPrepared {
		rec.State = dedup.TxRolledBack
		err = m.o.Store.TxUpdate(ctx, owner, rec)
	}
	if err != nil {
		m.log.Warn("transaction: recording a failed prepare failed; the checker asks the app", slog.String("id", id), slog.Any("error", err))
	}
}

// CheckBack answers the broker's check-back about the half message of id (RocketMQ):
// COMMIT or ROLLBACK as the outbox has it decided; for a message still undecided after
// the timeout, the app's check URL decides (and the outbox records it); otherwise UNKNOWN,
// and the broker asks again later.
func (m *Txn) CheckBack(ctx context.Context, id string) string {
	owner := m.claimOwner()
	rec, err := m.o.Store.TxClaim(ctx, id, owner, m.lease)
	switch {
	case errors.Is(err, dedup.ErrTxNotFound):
		// Not prepared through this outbox (or forgotten after its retention): the app knows.
		d, _ := m.ask(ctx, dedup.TxRecord{ID: id})
		return d
	case err != nil:
		return "UNKNOWN"
	}
	switch rec.State {
	case dedup.TxCommitted:
		var rc adapters.Receipt
		if json.Unmarshal(rec.Receipt, &rc) == nil && slices.Contains(rc.Durability, durabilityHalf) {
			if time.Since(rec.Resolved) < m.endRace {
				// The END just sent may still be on its way; answering COMMIT now would
				// commit the half message a second time. Ask again: if the END was lost,
				// the next check-back commits it.
				return "UNKNOWN"
			}
			return "COMMIT"
		}
		return "ROLLBACK" // published by a plain send: this half message is a second copy
	case dedup.TxRolledBack:
		return "ROLLBACK"
	case dedup.TxCommitting:
		// Its publish is being retried; that copy carries the same ID.
		m.release(ctx, owner, rec)
		return "UNKNOWN"
	}
	if m.o.Now().Before(rec.Prepared.Add(m.o.Timeout)) {
		m.release(ctx, owner, rec)
		return "UNKNOWN" // the app still has time to decide
	}
	decision, why := m.ask(ctx, rec)
	switch decision {
	case "COMMIT":
		var msg adapters.OutMessage
		_ = json.Unmarshal(rec.Message, &msg)
		rec.State = dedup.TxCommitted
		rec.Receipt, _ = json.Marshal(adapters.Receipt{Broker: "rocketmq", Topic: msg.Topic, ID: id,
			Durability: []string{"SEND_OK", durabilityHalf, durabilityByCheck}})
	case "ROLLBACK":
		rec.State = dedup.TxRolledBack
	default:
		rec.NextCheck = m.o.Now().Add(m.backoff(rec.Checks))
		rec.Checks++
		m.log.Info("check-back: transaction undecided", slog.String("id", id), slog.String("answer", why))
		m.release(ctx, owner, rec)
		return "UNKNOWN"
	}
	if err := m.o.Store.TxUpdate(ctx, owner, rec); err != nil {
		m.log.Warn("check-back: recording the decision failed; answering UNKNOWN", slog.String("id", id), slog.Any("error", err))
		return "UNKNOWN"
	}
	return decision
}

// release ends a claim without changing the record.
func (m *Txn) release(ctx context.Context, owner string, rec dedup.TxRecord) {
	if err := m.o.Store.TxUpdate(context.WithoutCancel(ctx), owner, rec); err != nil {
		m.log.Warn("transaction: releasing a claim failed; it expires", slog.String("id", rec.ID), slog.Any("error", err))
	}
}

func (m *Txn) backoff(checks int) time.Duration {
	d := m.o.MinBackoff
	for range min(checks, 30) {
		d *= 2
		if d >= m.o.MaxBackoff {
			return m.o.MaxBackoff
		}
	}
	return d
}

// Run runs the checker until ctx is done or Close: every Poll it resolves the records that
// are due (internal/lifecycle). It returns nil.
func (m *Txn) Run(ctx context.Context) error {
	return m.loop.Run(ctx, func() { _ = m.Close() }, func() error { m.check(ctx); return nil })
}

// Close stops the checker; a record it is resolving keeps its claim until the lease ends.
func (m *Txn) Close() error {
	m.stopOnce.Do(func() { close(m.stop) })
	m.loop.Stop(nil)
	return nil
}

func (m *Txn) check(ctx context.Context) {
	m.primeAll(ctx)
	t := time.NewTicker(m.o.Poll)
	defer t.Stop()
	for {
		m.CheckDue(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// primer is a HalfMessages that must be told the topics whose check-backs it should get.
type primer interface {
	Prime(ctx context.Context, topic string)
}

// primeAll, at the start, primes the topics of every unresolved record: their half
// messages' check-backs then reach this process, though it holds none of them.
func (m *Txn) primeAll(ctx context.Context) {
	p, ok := m.o.Half.(primer)
	if !ok {
		return
	}
	ids, err := m.o.Store.TxDue(ctx, m.o.Now().Add(100*365*24*time.Hour), 10000)
	if err != nil {
		m.log.Warn("transaction checker: listing the unresolved transactions failed", slog.Any("error", err))
		return
	}
	for _, id := range ids {
		rec, err := m.o.Store.TxGet(ctx, id)
		var msg adapters.OutMessage
		if err == nil && json.Unmarshal(rec.Message, &msg) == nil {
			p.Prime(ctx, msg.Topic)
		}
	}
}

// CheckDue resolves the records due now, one after another; the checker calls it every
// Poll. It returns how many it resolved (committed or rolled back).
func (m *Txn) CheckDue(ctx context.Context) int {
	ids, err := m.o.Store.TxDue(ctx, m.o.Now(), 64)
	if err != nil {
		m.log.Warn("transaction checker: listing due transactions failed", slog.Any("error", err))
		return 0
	}
	n := 0
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		if m.resolve(ctx, id) {
			n++
		}
	}
	return n
}

// resolve claims one due record and carries out its decision: a commit already made is
// published; an undecided one is put to the check URL.
func (m *Txn) resolve(ctx context.Context, id string) bool {
	owner := m.claimOwner()
	rec, err := m.o.Store.TxClaim(ctx, id, owner, m.lease)
	if err != nil || rec.State.Final() {
		return false // held elsewhere, gone, or resolved meanwhile
	}
	log := m.log.With(slog.String("id", id))
	if rec.State == dedup.TxPrepared && m.orphanInGrace(rec) {
		// The broker's check-back asks the app about it (CheckBack), once it knows to ask us.
		if p, ok := m.o.Half.(primer); ok {
			var msg adapters.OutMessage
			if json.Unmarshal(rec.Message, &msg) == nil {
				p.Prime(ctx, msg.Topic)
			}
		}
		rec.NextCheck = rec.Prepared.Add(m.o.OrphanGrace)
		m.release(ctx, owner, rec)
		return false
	}
	if rec.State == dedup.TxPrepared {
		decision, why := m.ask(ctx, rec)
		switch decision {
		case "ROLLBACK":
			rec.State = dedup.TxRolledBack
			if err := m.o.Store.TxUpdate(ctx, owner, rec); err != nil {
				log.Warn("transaction checker: recording the rollback failed", slog.Any("error", err))
				return false
			}
			m.endHalf(ctx, id)
			log.Info("transaction rolled back by the check URL")
			return true
		case "COMMIT":
		default:
			rec.NextCheck = m.o.Now().Add(m.backoff(rec.Checks))
			rec.Checks++
			log.Info("transaction undecided; asking again later", slog.String("answer", why), slog.Time("next", rec.NextCheck))
			m.release(ctx, owner, rec)
			return false
		}
	}
	pctx, cancel := context.WithTimeout(ctx, m.o.PublishTimeout)
	defer cancel()
	if _, err := m.publish(pctx, owner, rec); err != nil {
		log.Warn("transaction checker: publishing a committed transaction failed; retrying later", slog.Any("error", err))
		return false
	}
	log.Info("transaction committed by the checker")
	return true
}

// checkRequest is the body posted to the check URL.
type checkRequest struct {
	ID         string    `json:"id"`
	Topic      string    `json:"topic"`
	RoutingKey string    `json:"routing_key,omitempty"`
	PreparedAt time.Time `json:"prepared_at"`
	Checks     int       `json:"checks"`
}

// ask posts the record to the check URL: a 2xx answer whose body is COMMIT, ROLLBACK or
// UNKNOWN (plain text, or JSON {"status": ...}) decides; anything else is UNKNOWN. It
// returns the decision and, for UNKNOWN, what the app answered.
func (m *Txn) ask(ctx context.Context, rec dedup.TxRecord) (string, string) {
	if m.o.CheckURL == "" {
		return "UNKNOWN", "no check URL configured"
	}
	var msg adapters.OutMessage
	_ = json.Unmarshal(rec.Message, &msg)
	body, _ := json.Marshal(checkRequest{ID: rec.ID, Topic: msg.Topic, RoutingKey: msg.RoutingKey, PreparedAt: rec.Prepared, Checks: rec.Checks})
	ctx, cancel := context.WithTimeout(ctx, m.o.CheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.o.CheckURL, bytes.NewReader(body))
	if err != nil {
		return "UNKNOWN", err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Mq-Transaction-Id", rec.ID)
	resp, err := m.o.Client.Do(req)
	if err != nil {
		return "UNKNOWN", err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return "UNKNOWN", resp.Status
	}
	answer := strings.TrimSpace(string(raw))
	if strings.HasPrefix(answer, "{") {
		var v struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(raw, &v) == nil {
			answer = v.Status
		}
	}
	switch a := strings.ToUpper(strings.TrimSpace(answer)); a {
	case "COMMIT", "ROLLBACK":
		return a, ""
	default:
		return "UNKNOWN", answer
	}
}
