package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"

	"github.com/prometheus/client_golang/prometheus"
)

// fakePublisher records what it was asked to send and answers with next (nil = success).
type fakePublisher struct {
	mu   sync.Mutex
	sent []adapters.OutMessage
	next func(m adapters.OutMessage) error
	// block, when set, holds every Publish until it is closed (or ctx ends).
	block chan struct{}
	// entered receives a value when a Publish starts waiting on block (when not nil).
	entered chan struct{}
}

func (f *fakePublisher) Publish(ctx context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	if f.block != nil {
		if f.entered != nil {
			f.entered <- struct{}{}
		}
		select {
		case <-f.block:
		case <-ctx.Done():
			return adapters.Receipt{}, fmt.Errorf("%w: %w", adapters.ErrOutcomeUnknown, ctx.Err())
		}
	}
	f.mu.Lock()
	next := f.next
	f.mu.Unlock()
	if next != nil {
		if err := next(m); err != nil {
			return adapters.Receipt{}, err
		}
	}
	f.mu.Lock()
	f.sent = append(f.sent, m)
	n := int64(len(f.sent))
	f.mu.Unlock()
	p := int32(0)
	return adapters.Receipt{Broker: "fake", Topic: m.Topic, ID: m.ID, Partition: &p, Offset: &n, Durability: []string{"fake"}}, nil
}
func (f *fakePublisher) Run(context.Context) error   { return nil }
func (f *fakePublisher) Close(context.Context) error { return nil }

func (f *fakePublisher) count() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.sent) }

// memRecords is Records in memory (the stores' own tests run the contract on them).
type memRecords struct {
	mu   sync.Mutex
	m    map[string][]byte
	fail error
}

func (r *memRecords) SwapRecord(_ context.Context, key string, f func([]byte) ([]byte, bool)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	if r.m == nil {
		r.m = map[string][]byte{}
	}
	next, write := f(r.m[key])
	if write {
		if next == nil {
			delete(r.m, key)
		} else {
			r.m[key] = next
		}
	}
	return nil
}

func newTestServer(t *testing.T, pub adapters.Publisher, rec Records, mod func(*Options)) (*Server, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o := Options{Settings: Settings{MaxMessageBytes: 1024, Timeout: 2 * time.Second}, Broker: "kafka", Publisher: pub, Records: rec, Registerer: reg}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return s, hs, reg
}

// answer is what a test reads of a response, whose body post has read and closed.
type answer struct {
	StatusCode int
	Header     http.Header
}

func post(t *testing.T, url, body string, hdr ...string) (answer, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return answer{StatusCode: resp.StatusCode, Header: resp.Header}, string(b)
}

func TestPublishAnswersTheReceiptAndMapsHeaders(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, reg := newTestServer(t, pub, nil, nil)
	resp, body := post(t, hs.URL+"/v1/publish/orders", `{"a":1}`,
		"Content-Type", "application/json", "ce-type", "order.created", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"X-Tenant", "t1", "Authorization", "Bearer secret", "Connection", "keep-alive", "ce-partitionkey", "customer-7")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var rc adapters.Receipt
	if err := json.Unmarshal([]byte(body), &rc); err != nil || rc.Topic != "orders" || rc.ID == "" || rc.Offset == nil {
		t.Fatalf("receipt %s (%v)", body, err)
	}
	if got := resp.Header.Get(HeaderMessageID); got != rc.ID {
		t.Fatalf("%s = %q, receipt ID %q", HeaderMessageID, got, rc.ID)
	}
	m := pub.sent[0]
	if m.Topic != "orders" || string(m.Payload) != `{"a":1}` || m.ContentType != "application/json" || m.Key != "customer-7" || m.ID != rc.ID {
		t.Fatalf("sent %+v", m)
	}
	got := map[string]string{}
	for _, h := range m.Headers {
		got[h.Key] = h.Value
	}
	for k, v := range map[string]string{"ce-type": "order.created", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-tenant": "t1"} {
		if got[k] != v {
			t.Errorf("header %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	for _, k := range []string{"authorization", "connection", "content-type", "content-length", "ce-partitionkey", "user-agent"} {
		if _, ok := got[k]; ok {
			t.Errorf("header %s was forwarded: %v", k, got)
		}
	}
	if v := counterValue(t, reg, "orders", "ok"); v != 1 {
		t.Fatalf("ok counter = %v", v)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, topic, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mqsidecar_publish_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["topic"] == topic && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestPublishErrorsMapToStatuses(t *testing.T) {
	cases := []struct {
		err    error
		status int
	}{
		{fmt.Errorf("%w: topic x", adapters.ErrUnknownTopic), 404},
		{adapters.ErrUnroutable, 422},
		{adapters.ErrRejected, 422},
		{fmt.Errorf("%w: connection refused", adapters.ErrUnavailable), 503},
		{fmt.Errorf("%w: timeout after the send", adapters.ErrOutcomeUnknown), 504},
		{errors.New("something unclassified"), 504},
	}
	for _, c := range cases {
		pub := &fakePublisher{next: func(adapters.OutMessage) error { return c.err }}
		_, hs, _ := newTestServer(t, pub, nil, nil)
		resp, body := post(t, hs.URL+"/v1/publish/t", "x")
		var p Problem
		if resp.StatusCode != c.status || json.Unmarshal([]byte(body), &p) != nil || !strings.Contains(p.Error, c.err.Error()) || p.ID == "" {
			t.Errorf("%v: status %d body %s, want %d naming the error and the ID", c.err, resp.StatusCode, body, c.status)
		}
		if c.status == 503 && resp.Header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After")
		}
	}
}

func TestPublishTooLargeIsRefusedBeforeSending(t *testing.T) {
	pub := &fakePublisher{}
	_, hs, _ := newTestServer(t, pub, nil, nil)
	resp, body := post(t, hs.URL+"/v1/publish/t", strings.Repeat("x", 1025))
	if resp.StatusCode != 413 || pub.count() != 0 {
		t.Fatalf("status %d (%s), sent %d", resp.StatusCode, body, pub.count())
	}
	// Without a Content-Length (chunked), the limit is found while reading.
	pr, pw := io.Pipe()
	go func() { _, _ = pw.Write([]byte(strings.Repeat("y", 2000))); pw.Close() }()
	req, _ := http.NewRequest(http.MethodPost, hs.URL+"/v1/publish/t", pr)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 413 || pub.count() != 0 {
		t.Fatalf("chunked: status %d, sent %d", r2.StatusCode, pub.count())
	}
	if resp, _ := post(t, hs.URL+"/v1/publish/t", strings.Repeat("x", 1024)); resp.StatusCode != 200 {
		t.Fatalf("exactly the limit: %d", resp.StatusCode)
	}
}

func TestPublishClientGoneMidBodySendsNothing(t *testing.T) {
	pub := &fakePublisher{}
	s, _, _ := newTestServer(t, pub, nil, nil)
	pr, pw := io.Pipe()
	req := httptest.NewRequest(http.MethodPost, "/v1/publish/t", pr)
	req.ContentLength = 100
	go func() { _, _ = pw.Write([]byte("partial")); pw.CloseWithError(io.ErrUnexpectedEOF) }()
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if pub.count() != 0 {
		t.Fatalf("a request cut mid-body was sent")
	}
	// A client gone after its body arrived but before the send: nothing sent either.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req = httptest.NewRequest(http.MethodPost, "/v1/publish/t", strings.NewReader("whole")).WithContext(ctx)
	s.ServeHTTP(httptest.NewRecorder(), req)
	if pub.count() != 0 {
		t.Fatalf("a request whose client was gone was sent")
	}
}

// TestRunDrainsPublishesInFlight: when Run's context ends, the endpoint stops taking
// requests (a new one is refused) and Run returns only after the publish in flight was
// answered, so the sidecar closes the publisher after it.
func TestRunDrainsPublishesInFlight(t *testing.T) {
	pub := &fakePublisher{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	s, err := New(Options{Settings: Settings{Listen: "127.0.0.1:0", MaxMessageBytes: 1024, Timeout: 5 * time.Second}, Broker: "kafka", Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	answered := make(chan int, 1)
	go func() {
		resp, _ := post(t, "http://"+s.Addr()+"/v1/publish/t", "p")
		answered <- resp.StatusCode
	}()
	<-pub.entered
	cancel()
	select {
	case <-ran:
		t.Fatal("Run returned while a publish was in flight")
	case <-time.After(300 * time.Millisecond):
	}
	// A request arriving now is refused, whether or not the listener still accepts.
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/publish/t", strings.NewReader("q")))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("a request during the drain: %d", w.Code)
	}
	close(pub.block)
	if st := <-answered; st != 200 {
		t.Fatalf("the publish in flight was answered %d", st)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if pub.count() != 1 {
		t.Fatalf("sent %d", pub.count())
	}
}
