//go:build e2e

package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// brokerURL returns MQSIDECAR_E2E_RABBITMQ; without it the test is skipped, or fails under
// CI=true.
func brokerURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("MQSIDECAR_E2E_RABBITMQ")
	if u == "" {
		msg := "MQSIDECAR_E2E_RABBITMQ is not set (start a broker with e2e/harness/rabbitmq.sh start; eval $(e2e/harness/rabbitmq.sh env))"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return u
}

// admin is a test-side AMQP connection for topology, producing and inspecting. It
// re-dials when the broker closed its connection (recovery tests do that).
type admin struct {
	t   *testing.T
	url string
	c   *adminConn
}

type adminConn struct {
	mu   sync.Mutex
	conn *amqp.Connection
}

func newAdmin(t *testing.T) *admin { return newAdminURL(t, brokerURL(t)) }

func newAdminURL(t *testing.T, u string) *admin {
	t.Helper()
	a := &admin{t: t, url: u, c: &adminConn{}}
	t.Cleanup(func() {
		a.c.mu.Lock()
		defer a.c.mu.Unlock()
		if a.c.conn != nil {
			_ = a.c.conn.Close()
		}
	})
	a.must("connect", func(*amqp.Channel) error { return nil })
	return a
}

// with returns the same admin reporting to another (sub)test.
func (a *admin) with(t *testing.T) *admin { return &admin{t: t, url: a.url, c: a.c} }

// do runs f on a fresh channel (a channel error only costs that channel).
func (a *admin) do(f func(ch *amqp.Channel) error) error {
	a.c.mu.Lock()
	if a.c.conn == nil || a.c.conn.IsClosed() {
		conn, err := amqp.Dial(a.url)
		if err != nil {
			a.c.mu.Unlock()
			return err
		}
		a.c.conn = conn
	}
	conn := a.c.conn
	a.c.mu.Unlock()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return f(ch)
}

func (a *admin) must(what string, f func(ch *amqp.Channel) error) {
	a.t.Helper()
	if err := a.do(f); err != nil {
		a.t.Fatalf("admin: %s: %v", what, err)
	}
}

// queue declares a durable queue (deleted at cleanup).
func (a *admin) queue(name string, args amqp.Table) {
	a.t.Helper()
	a.must("declare queue "+name, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, true, false, false, false, args)
		return err
	})
	a.t.Cleanup(func() { a.deleteQueue(name) })
}

func (a *admin) deleteQueue(name string) {
	_ = a.do(func(ch *amqp.Channel) error {
		_, err := ch.QueueDelete(name, false, false, false)
		return err
	})
}

// dlx declares the shared dead-letter exchange and a queue bound to it with key name.
func (a *admin) dlx(name string) string {
	a.t.Helper()
	a.must("declare exchange", func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare("mqsc.dlx", "direct", true, false, false, false, nil)
	})
	a.queue(name, nil)
	a.must("bind "+name, func(ch *amqp.Channel) error { return ch.QueueBind(name, name, "mqsc.dlx", false, nil) })
	return "mqsc.dlx/" + name
}

// publish sends msgs to queue (default exchange) with message_id = ID, persistent,
// and waits for the confirms.
func (a *admin) publish(queue string, msgs ...adaptertest.Message) {
	a.t.Helper()
	a.must("publish", func(ch *amqp.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var dcs []*amqp.DeferredConfirmation
		for _, m := range msgs {
			h := amqp.Table{}
			for _, x := range m.Headers {
				h[x.Key] = x.Value
			}
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
				MessageId:    m.ID,
				Headers:      h,
				ContentType:  "text/plain",
				DeliveryMode: amqp.Persistent,
				Timestamp:    time.Now(),
				Body:         m.Payload,
			})
			if err != nil {
				return err
			}
			dcs = append(dcs, dc)
		}
		for _, dc := range dcs {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return err
			}
			if !ok {
				return errors.New("publish nacked")
			}
		}
		return nil
	})
}

// count is the number of ready messages in queue (unacknowledged ones are not counted).
func (a *admin) count(queue string) int {
	a.t.Helper()
	var n int
	a.must("inspect "+queue, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	})
	return n
}

// get takes n messages from queue with basic.get (auto-ack), polling up to timeout.
func (a *admin) get(queue string, n int, timeout time.Duration) []amqp.Delivery {
	a.t.Helper()
	var out []amqp.Delivery
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		var m amqp.Delivery
		var ok bool
		a.must("get "+queue, func(ch *amqp.Channel) error {
			var err error
			m, ok, err = ch.Get(queue, true)
			return err
		})
		if ok {
			out = append(out, m)
			continue
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("admin: %d of %d messages on %s within %v", len(out), n, queue, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return out
}

// ctl runs a rabbitmqctl command against the test broker through the harness, or through
// MQSIDECAR_E2E_RABBITMQCTL (a command prefix such as "rabbitmqctl -n rabbit@localhost").
func ctl(t *testing.T, args ...string) {
	t.Helper()
	var cmd *exec.Cmd
	if prefix := os.Getenv("MQSIDECAR_E2E_RABBITMQCTL"); prefix != "" {
		f := strings.Fields(prefix)
		cmd = exec.Command(f[0], append(f[1:], args...)...)
	} else {
		script := filepath.Join(repoRoot(), "e2e", "harness", "rabbitmq.sh")
		if _, err := os.Stat(script); err != nil {
			msg := "no e2e/harness/rabbitmq.sh and no MQSIDECAR_E2E_RABBITMQCTL: cannot run rabbitmqctl"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		cmd = exec.Command(script, append([]string{"ctl"}, args...)...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// cutter dials through the real network and can cut every connection it made, like a
// network failure (or, with Source.kill, like kill -9 of the sidecar).
type cutter struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (c *cutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conns = append(c.conns, conn)
	c.mu.Unlock()
	return conn, nil
}

func (c *cutter) cut() {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, conn := range conns {
		_ = conn.Close()
	}
}

// srcOpts are the options for test sources.
type srcOpts struct {
	url        string // default brokerURL
	prefetch   int
	declare    bool
	mode       string
	messageID  string
	deadLetter string
	noRun      bool // the caller runs it (the conformance suite)
}

type testSource struct {
	*Source
	cut     *cutter
	logs    *logBuffer
	metrics *recordingMetrics
}

// open starts a source on queue and closes it at cleanup; its logs are printed when the
// test fails.
func open(t *testing.T, queue string, o srcOpts) *testSource {
	t.Helper()
	cfg := Defaults()
	cfg.URL = settings.Secret(brokerURL(t))
	if o.url != "" {
		cfg.URL = settings.Secret(o.url)
	}
	cfg.Queue = queue
	if o.prefetch > 0 {
		cfg.Prefetch = o.prefetch
	}
	cfg.Declare = o.declare
	if o.mode != "" {
		cfg.DeadLetterMode = o.mode
	}
	if o.messageID != "" {
		cfg.MessageID = o.messageID
	}
	log, logs := testLogger(t)
	ts := &testSource{cut: &cutter{}, logs: logs, metrics: &recordingMetrics{}}
	s, err := New(cfg, o.deadLetter, WithLogger(log), WithEvents(ts.metrics), withTrace(ts.metrics.Inc),
		WithBackoff(50*time.Millisecond, time.Second), WithPublishTimeout(10*time.Second), withDialer(ts.cut.dial))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts.Source = s
	if !o.noRun {
		lifecycletest.Start(t, s.Run) // after the Close below
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Close(ctx)
		if t.Failed() {
			t.Logf("source logs (%s):\n%s", queue, logs.String())
		}
	})
	return ts
}

// recordingMetrics counts events and records connection state transitions.
type recordingMetrics struct {
	countingMetrics
	mu     sync.Mutex
	states []bool
}

func (m *recordingMetrics) SetSourceReady(up bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.states); n == 0 || m.states[n-1] != up {
		m.states = append(m.states, up)
	}
}

// sawDownThenUp reports an up → down → up sequence.
func (m *recordingMetrics) sawDownThenUp() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.states
	for i := 0; i+2 < len(s); i++ {
		if s[i] && !s[i+1] && s[i+2] {
			return true
		}
	}
	return false
}

func readOne(t *testing.T, src adapters.Source, timeout time.Duration) *adapters.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := src.Read(ctx)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return d
}

// nothingWithin asserts that Read yields nothing for d (short: a negative check).
func nothingWithin(t *testing.T, src adapters.Source, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if got, err := src.Read(ctx); err == nil {
		t.Fatalf("unexpected delivery %q", got.ID)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read: %v", err)
	}
}

func uniqueName(t *testing.T) string {
	n := strings.ToLower(strings.NewReplacer("/", "-", " ", "-", "_", "-").Replace(t.Name()))
	if len(n) > 60 {
		n = n[:60]
	}
	return "mqsc-" + n + "-" + randHex(4)
}

func msgs(prefix string, n int) []adaptertest.Message {
	out := make([]adaptertest.Message, n)
	for i := range out {
		id := fmt.Sprintf("%s-%s-%04d", prefix, randHex(3), i)
		out[i] = adaptertest.Message{ID: id, Payload: []byte("payload " + id)}
	}
	return out
}

// vhost creates a private vhost (deleted at cleanup) and returns the broker URL for it, so
// that broker-side disruptions (close_all_connections --vhost) touch only this test.
func vhost(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueName(t)
	ctl(t, "add_vhost", name)
	t.Cleanup(func() { ctl(t, "delete_vhost", name) })
	user := u.User.Username()
	ctl(t, "set_permissions", "-p", name, user, ".*", ".*", ".*")
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

// repoRoot is the repository root (two levels above this package).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
