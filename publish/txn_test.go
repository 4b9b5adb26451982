package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
)

// recorder is a Publisher that keeps what it confirmed; fail, while set, is returned instead.
type recorder struct {
	mu   sync.Mutex
	sent []adapters.OutMessage
	fail error
}

func (p *recorder) Publish(_ context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return adapters.Receipt{}, p.fail
	}
	p.sent = append(p.sent, m)
	off := int64(len(p.sent) - 1)
	return adapters.Receipt{Broker: "test", Topic: m.Topic, ID: m.ID, Offset: &off, Durability: []string{"test"}}, nil
}
func (p *recorder) Run(ctx context.Context) error   { <-ctx.Done(); return nil }
func (p *recorder) Close(ctx context.Context) error { return nil }

func (p *recorder) count(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.sent {
		if m.ID == id {
			n++
		}
	}
	return n
}

func (p *recorder) setFail(err error) {
	p.mu.Lock()
	p.fail = err
	p.mu.Unlock()
}

// checkApp is the app's check URL: it answers answer() and counts the calls per ID.
type checkApp struct {
	srv    *httptest.Server
	mu     sync.Mutex
	answer string
	calls  map[string]int
}

func newCheckApp(t *testing.T, answer string) *checkApp {
	a := &checkApp{answer: answer, calls: map[string]int{}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req checkRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		a.mu.Lock()
		a.calls[req.ID]++
		ans := a.answer
		a.mu.Unlock()
		if req.ID != r.Header.Get("Mq-Transaction-Id") {
			http.Error(w, "id mismatch", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, ans)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *checkApp) set(answer string) { a.mu.Lock(); a.answer = answer; a.mu.Unlock() }
func (a *checkApp) n(id string) int   { a.mu.Lock(); defer a.mu.Unlock(); return a.calls[id] }

// clock is a settable Now that stands still between advances.
type clock struct{ off atomic.Int64 }

var clockBase = time.Now()

func (c *clock) now() time.Time          { return clockBase.Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration) { c.off.Add(int64(d)) }

type fixture struct {
	t     *testing.T
	store *dedup.Store
	path  string
	pub   *recorder
	app   *checkApp
	clk   *clock
	m     *Txn
	srv   *httptest.Server
}

func openStore(t *testing.T, path string) *dedup.Store {
	s, err := dedup.Open(path, dedup.Options{TTL: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newFixture(t *testing.T, answer string) *fixture {
	f := &fixture{t: t, path: filepath.Join(t.TempDir(), "dedup.db"), pub: &recorder{}, app: newCheckApp(t, answer), clk: &clock{}}
	f.store = openStore(t, f.path)
	f.start()
	return f
}

// start builds the manager (again, as after a restart) on f.store.
func (f *fixture) start() {
	m, err := NewTxn(TxnOptions{
		Store: f.store, Publisher: f.pub, CheckURL: f.app.srv.URL, Timeout: 10 * time.Second,
		MinBackoff: time.Second, MaxBackoff: 4 * time.Second, Logger: slog.New(slog.DiscardHandler), Now: f.clk.now,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	f.m = m
	if f.srv != nil {
		f.srv.Close()
	}
	f.srv = httptest.NewServer(m)
	f.t.Cleanup(f.srv.Close)
}

func (f *fixture) do(method, path string, body string, hdr ...string) (int, txView) {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v txView
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &v); err != nil {
		f.t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, v
}

func (f *fixture) prepare(body string, hdr ...string) string {
	f.t.Helper()
	code, v := f.do("POST", "/v1/transactions?topic=orders", body, hdr...)
	if code != http.StatusCreated || v.ID == "" || v.State != "prepared" {
		f.t.Fatalf("prepare: %d %+v", code, v)
	}
	return v.ID
}

func (f *fixture) want(method, path string, code int, state string) txView {
	f.t.Helper()
	got, v := f.do(method, path, "")
	if got != code || v.State != state {
		f.t.Fatalf("%s %s = %d %+v, want %d state %q", method, path, got, v, code, state)
	}
	return v
}

func TestTxnCommitOnceSameReceipt(t *testing.T) {
	f := newFixture(t, "ROLLBACK")
	id := f.prepare("payload", "Content-Type", "text/plain", "Ce-Type", "order.created")
	if f.pub.count(id) != 0 {
		t.Fatal("published at prepare")
	}
	first := f.want("POST", "/v1/transactions/"+id+"/commit", 200, "committed")
	if first.Receipt == nil || first.Receipt.ID != id || first.Receipt.Offset == nil {
		t.Fatalf("commit receipt = %+v", first.Receipt)
	}
	second := f.want("POST", "/v1/transactions/"+id+"/commit", 200, "committed")
	if *second.Receipt.Offset != *first.Receipt.Offset {
		t.Fatalf("second commit receipt %+v, want the first %+v", second.Receipt, first.Receipt)
	}
	if n := f.pub.count(id); n != 1 {
		t.Fatalf("published %d times, want 1", n)
	}
	m := f.pub.sent[0]
	if string(m.Payload) != "payload" || m.ContentType != "text/plain" || m.Topic != "orders" ||
		len(m.Headers) != 1 || m.Headers[0] != (adapters.Header{Key: "ce-type", Value: "order.created"}) {
		t.Fatalf("published message %+v", m)
	}
	f.want("POST", "/v1/transactions/"+id+"/rollback", 409, "committed")
	// The checker never touches a committed record.
	f.clk.advance(time.Hour)
	f.m.CheckDue(context.Background())
	if f.app.n(id) != 0 || f.pub.count(id) != 1 {
		t.Fatalf("checker after commit: %d checks, %d publishes", f.app.n(id), f.pub.count(id))
	}
}

func TestTxnRollbackNeverPublished(t *testing.T) {
	f := newFixture(t, "COMMIT")
	id := f.prepare("x")
	f.want("POST", "/v1/transactions/"+id+"/rollback", 200, "rolled_back")
	f.want("POST", "/v1/transactions/"+id+"/rollback", 200, "rolled_back")
	f.want("POST", "/v1/transactions/"+id+"/commit", 409, "rolled_back")
	f.clk.advance(30 * time.Minute) // within the store's retention (its TTL, 1h)
	f.m.CheckDue(context.Background())
	if f.pub.count(id) != 0 || f.app.n(id) != 0 {
		t.Fatalf("rolled back: %d publishes, %d checks", f.pub.count(id), f.app.n(id))
	}
	f.want("POST", "/v1/transactions/nope/commit", 404, "")
	f.want("POST", "/v1/transactions/nope/rollback", 404, "")
	f.want("GET", "/v1/transactions/"+id, 200, "rolled_back")
}

func TestTxnPrepareRetry(t *testing.T) {
	f := newFixture(t, "UNKNOWN")
	id := f.prepare("a", "Idempotency-Key", "k1", "Ce-Source", "s")
	if id != "k1" {
		t.Fatalf("id = %q, want the Idempotency-Key", id)
	}
	f.want("POST", "/v1/transactions?topic=orders", 201, "prepared") // no key: a new ID
	code, v := f.do("POST", "/v1/transactions?topic=orders", "a", "Idempotency-Key", "k1", "Ce-Source", "s")
	if code != 200 || v.ID != "k1" {
		t.Fatalf("retried prepare = %d %+v, want 200", code, v)
	}
	if code, v := f.do("POST", "/v1/transactions?topic=orders", "b", "Idempotency-Key", "k1"); code != 422 {
		t.Fatalf("prepare of k1 with another payload = %d %+v, want 422", code, v)
	}
	if code, _ := f.do("POST", "/v1/transactions", "a"); code != 400 {
		t.Fatalf("prepare without a topic = %d, want 400", code)
	}
}

// The app answers neither commit nor rollback: after the timeout the check URL decides;
// UNKNOWN asks again after a bounded backoff.
func TestTxnCheckBackDecides(t *testing.T) {
	f := newFixture(t, "UNKNOWN")
	ctx := context.Background()
	commitID, rollbackID := f.prepare("c"), f.prepare("r")
	f.m.CheckDue(ctx)
	if f.app.n(commitID) != 0 {
		t.Fatal("asked before the timeout")
	}
	f.clk.advance(11 * time.Second)
	f.m.CheckDue(ctx)
	if f.app.n(commitID) != 1 || f.pub.count(commitID) != 0 {
		t.Fatalf("UNKNOWN: %d checks, %d publishes; want 1, 0", f.app.n(commitID), f.pub.count(commitID))
	}
	f.m.CheckDue(ctx) // not due again before the backoff
	if f.app.n(commitID) != 1 {
		t.Fatalf("asked again within the backoff: %d", f.app.n(commitID))
	}
	// Backoff 1s, 2s, 4s, 4s: bounded.
	for i, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		f.clk.advance(d - 10*time.Millisecond)
		f.m.CheckDue(ctx)
		if f.app.n(commitID) != i+1 {
			t.Fatalf("asked before backoff %d (%s) ended", i, d)
		}
		f.clk.advance(20 * time.Millisecond)
		f.m.CheckDue(ctx)
		if f.app.n(commitID) != i+2 {
			t.Fatalf("not asked after backoff %d (%s): %d calls", i, d, f.app.n(commitID))
		}
	}
	f.app.set("COMMIT")
	f.want("POST", "/v1/transactions/"+rollbackID+"/rollback", 200, "rolled_back")
	f.clk.advance(time.Minute)
	f.m.CheckDue(ctx)
	if f.pub.count(commitID) != 1 || f.pub.count(rollbackID) != 0 {
		t.Fatalf("after COMMIT: %d / %d publishes, want 1 / 0", f.pub.count(commitID), f.pub.count(rollbackID))
	}
	f.want("POST", "/v1/transactions/"+commitID+"/commit", 200, "committed")
	if f.pub.count(commitID) != 1 {
		t.Fatal("a commit after the checker's commit published again")
	}
	id := f.prepare("r2")
	f.app.set(" rollback\n")
	f.clk.advance(time.Minute)
	f.m.CheckDue(ctx)
	f.want("GET", "/v1/transactions/"+id, 200, "rolled_back")
	if f.pub.count(id) != 0 {
		t.Fatal("ROLLBACK published")
	}
}

// After a restart the prepared records are still there and the checker resolves them.
func TestTxnRestart(t *testing.T) {
	f := newFixture(t, `{"status":"COMMIT"}`)
	id := f.prepare("survives")
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	f.store = openStore(t, f.path)
	f.start()
	f.want("GET", "/v1/transactions/"+id, 200, "prepared")
	f.clk.advance(time.Minute)
	if n := f.m.CheckDue(context.Background()); n != 1 {
		t.Fatalf("CheckDue resolved %d, want 1", n)
	}
	if f.pub.count(id) != 1 || f.app.n(id) != 1 {
		t.Fatalf("after restart: %d publishes, %d checks", f.pub.count(id), f.app.n(id))
	}
}

// A commit the broker does not confirm is answered 503/504 and stays a commit: the checker
// publishes it later without asking the app again, and a rollback is refused.
func TestTxnCommitPublishFails(t *testing.T) {
	f := newFixture(t, "ROLLBACK")
	for _, c := range []struct {
		err  error
		code int
	}{{adapters.ErrUnavailable, 503}, {fmt.Errorf("x: %w", adapters.ErrOutcomeUnknown), 504}} {
		id := f.prepare("p")
		f.pub.setFail(c.err)
		f.want("POST", "/v1/transactions/"+id+"/commit", c.code, "committing")
		f.want("POST", "/v1/transactions/"+id+"/rollback", 409, "committing")
		f.clk.advance(time.Hour)
		f.m.CheckDue(context.Background())
		if f.pub.count(id) != 0 {
			t.Fatal("published while failing")
		}
		f.pub.setFail(nil)
		f.clk.advance(time.Hour)
		f.m.CheckDue(context.Background())
		if f.pub.count(id) != 1 || f.app.n(id) != 0 {
			t.Fatalf("checker after a failed commit: %d publishes, %d checks; want 1, 0", f.pub.count(id), f.app.n(id))
		}
		f.want("POST", "/v1/transactions/"+id+"/commit", 200, "committed")
	}
}

// Run is a lifecycle part: it checks on its own and returns nil when its context ends.
func TestTxnRun(t *testing.T) {
	f := newFixture(t, "COMMIT")
	m, err := NewTxn(TxnOptions{Store: f.store, Publisher: f.pub, CheckURL: f.app.srv.URL,
		Timeout: 50 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	defer srv.Close()
	f.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	id := f.prepare("auto")
	deadline := time.Now().Add(5 * time.Second)
	for f.pub.count(id) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if f.pub.count(id) != 1 {
		t.Fatalf("Run's checker published %d times, want 1", f.pub.count(id))
	}
}

// fakeHalf is a broker with half messages: the IDs in held are held open here.
type fakeHalf struct {
	mu    sync.Mutex
	held  map[string]bool
	ended map[string]string // id -> "commit" / "rollback"
}

func (h *fakeHalf) Prepare(_ context.Context, m adapters.OutMessage) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held[m.ID] = true
	return nil
}

func (h *fakeHalf) End(_ context.Context, id string, commit bool) (adapters.Receipt, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.held[id] {
		return adapters.Receipt{}, false, nil
	}
	delete(h.held, id)
	h.ended[id] = map[bool]string{true: "commit", false: "rollback"}[commit]
	return adapters.Receipt{Broker: "rocketmq", ID: id, Durability: []string{"SEND_OK", durabilityHalf}}, true, nil
}

func (h *fakeHalf) Holds(id string) bool { h.mu.Lock(); defer h.mu.Unlock(); return h.held[id] }

// forget is the process's death: nothing is held any more.
func (h *fakeHalf) forget() { h.mu.Lock(); h.held = map[string]bool{}; h.mu.Unlock() }

func (h *fakeHalf) end(id string) string { h.mu.Lock(); defer h.mu.Unlock(); return h.ended[id] }

func newHalfFixture(t *testing.T, answer string) (*fixture, *fakeHalf) {
	f := newFixture(t, answer)
	h := &fakeHalf{held: map[string]bool{}, ended: map[string]string{}}
	m, err := NewTxn(TxnOptions{Store: f.store, Publisher: f.pub, Half: h, CheckURL: f.app.srv.URL, Timeout: 10 * time.Second,
		OrphanGrace: time.Minute, Logger: slog.New(slog.DiscardHandler), Now: f.clk.now})
	if err != nil {
		t.Fatal(err)
	}
	f.m = m
	f.srv.Close()
	f.srv = httptest.NewServer(m)
	t.Cleanup(f.srv.Close)
	return f, h
}

// A half message held here is ended by commit and rollback; nothing goes through the
// plain publisher, and the broker's check-back reads the decisions from the outbox.
func TestTxnHalfHeld(t *testing.T) {
	f, h := newHalfFixture(t, "UNKNOWN")
	ctx := context.Background()
	c, r, u := f.prepare("c"), f.prepare("r"), f.prepare("u")
	f.want("POST", "/v1/transactions/"+c+"/commit", 200, "committed")
	f.want("POST", "/v1/transactions/"+r+"/rollback", 200, "rolled_back")
	if h.end(c) != "commit" || h.end(r) != "rollback" || f.pub.count(c) != 0 {
		t.Fatalf("ends %q %q, plain publishes %d", h.end(c), h.end(r), f.pub.count(c))
	}
	// Right after the commit, its END may still be on the way: no second commit.
	if got := f.m.CheckBack(ctx, c); got != "UNKNOWN" {
		t.Fatalf("CheckBack right after the commit = %s, want UNKNOWN", got)
	}
	f.m.endRace = 0
	if got := f.m.CheckBack(ctx, c); got != "COMMIT" {
		t.Fatalf("CheckBack of a committed half message = %s", got)
	}
	if got := f.m.CheckBack(ctx, r); got != "ROLLBACK" {
		t.Fatalf("CheckBack of a rolled back one = %s", got)
	}
	// Undecided: before the timeout the app is not asked; after it, it decides.
	if got := f.m.CheckBack(ctx, u); got != "UNKNOWN" || f.app.n(u) != 0 {
		t.Fatalf("CheckBack before the timeout = %s, %d checks", got, f.app.n(u))
	}
	f.clk.advance(11 * time.Second)
	if got := f.m.CheckBack(ctx, u); got != "UNKNOWN" || f.app.n(u) != 1 {
		t.Fatalf("CheckBack with the app undecided = %s, %d checks", got, f.app.n(u))
	}
	f.app.set("COMMIT")
	f.clk.advance(time.Minute)
	if got := f.m.CheckBack(ctx, u); got != "COMMIT" {
		t.Fatalf("CheckBack with the app at COMMIT = %s", got)
	}
	f.want("GET", "/v1/transactions/"+u, 200, "committed")
	f.m.CheckDue(ctx)
	if f.pub.count(u) != 0 || h.end(u) != "" {
		t.Fatalf("a check-back commit was also published: %d plain, end %q", f.pub.count(u), h.end(u))
	}
}

// After the process died, its half messages are orphans: within the grace the broker's
// check-back decides them (a commit is only recorded, the checker leaves them alone);
// after it, the checker asks the app and a commit goes out by a plain send, and the
// orphan is then rolled back by the check-back, so the message is consumed once.
func TestTxnHalfOrphans(t *testing.T) {
	f, h := newHalfFixture(t, "COMMIT")
	ctx := context.Background()
	a, b := f.prepare("a"), f.prepare("b")
	h.forget()
	f.m.endRace = 0
	f.want("POST", "/v1/transactions/"+a+"/commit", 200, "committed")
	if f.pub.count(a) != 0 {
		t.Fatal("an orphan in its grace was published by a plain send")
	}
	if got := f.m.CheckBack(ctx, a); got != "COMMIT" {
		t.Fatalf("CheckBack of an orphan committed in its grace = %s", got)
	}
	f.clk.advance(30 * time.Second)
	f.m.CheckDue(ctx)
	if f.app.n(b) != 0 || f.pub.count(b) != 0 {
		t.Fatalf("the checker took an orphan in its grace: %d checks, %d publishes", f.app.n(b), f.pub.count(b))
	}
	f.clk.advance(31 * time.Second)
	f.m.CheckDue(ctx)
	if f.app.n(b) != 1 || f.pub.count(b) != 1 {
		t.Fatalf("after the grace: %d checks, %d publishes; want 1, 1", f.app.n(b), f.pub.count(b))
	}
	if got := f.m.CheckBack(ctx, b); got != "ROLLBACK" {
		t.Fatalf("CheckBack of an orphan published by a plain send = %s, want ROLLBACK", got)
	}
}
