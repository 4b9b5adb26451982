//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitEnv is a real RabbitMQ seen from the test: a durable queue, a publisher with
// confirms, and the queue's counters from rabbitmqctl (through the harness, so the node is
// the one MQSIDECAR_E2E_* describes).
type rabbitEnv struct {
	t     *testing.T
	url   string
	queue string

	mu       sync.Mutex
	conn     *amqp.Connection
	ch       *amqp.Channel
	produced []message
}

// newRabbitE2E connects to MQSIDECAR_E2E_RABBITMQ and declares a fresh durable queue.
func newRabbitE2E(t *testing.T, name string) *rabbitEnv {
	t.Helper()
	r := &rabbitEnv{t: t, url: brokerEnv(t, "MQSIDECAR_E2E_RABBITMQ", "rabbitmq.sh"), queue: uniqueName("e2e-" + name)}
	ch, err := r.channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(r.queue, true, false, false, false, nil); err != nil {
		t.Fatalf("declare queue %s: %v", r.queue, err)
	}
	t.Cleanup(func() {
		if ch, err := r.channel(); err == nil {
			_, _ = ch.QueueDelete(r.queue, false, false, false)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.conn != nil {
			_ = r.conn.Close()
		}
	})
	return r
}

// exchange declares a durable direct exchange name, bound to the test's queue with bindKey
// (none when bindKey is empty), and deletes it when the test ends.
func (r *rabbitEnv) exchange(t *testing.T, name, bindKey string) string {
	t.Helper()
	ch, err := r.channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(name, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if bindKey != "" {
		if err := ch.QueueBind(r.queue, bindKey, name, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if ch, err := r.channel(); err == nil {
			_ = ch.ExchangeDelete(name, false, false)
		}
	})
	return name
}

// channel returns the publishing channel (confirm mode), dialling again after a broker
// restart closed the old connection.
func (r *rabbitEnv) channel() (*amqp.Channel, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ch != nil && !r.ch.IsClosed() {
		return r.ch, nil
	}
	if r.conn == nil || r.conn.IsClosed() {
		conn, err := amqp.Dial(r.url)
		if err != nil {
			return nil, fmt.Errorf("rabbitmq: dial: %w", err)
		}
		r.conn = conn
	}
	ch, err := r.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("rabbitmq: confirm mode: %w", err)
	}
	r.ch = ch
	return ch, nil
}

func (r *rabbitEnv) name() string     { return "rabbitmq" }
func (r *rabbitEnv) describe() string { return "queue " + r.queue }

// produce publishes msgs (persistent, message_id = ID) and waits for every confirm.
func (r *rabbitEnv) produce(ctx context.Context, msgs []message) error {
	ch, err := r.channel()
	if err != nil {
		return err
	}
	dcs := make([]*amqp.DeferredConfirmation, len(msgs))
	for i, m := range msgs {
		pub := amqp.Publishing{
			MessageId:    m.ID,
			DeliveryMode: amqp.Persistent,
			ContentType:  "application/json",
			Body:         fmt.Appendf(nil, `{"id":%q,"n":%d}`, m.ID, i),
		}
		if m.Key != "" {
			pub.Headers = amqp.Table{"e2e-key": m.Key}
		}
		if dcs[i], err = ch.PublishWithDeferredConfirmWithContext(ctx, "", r.queue, false, false, pub); err != nil {
			return fmt.Errorf("rabbitmq: publish %s: %w", m.ID, err)
		}
	}
	for i, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("rabbitmq: confirm of %s: %w", msgs[i].ID, err)
		}
		if !ok {
			return fmt.Errorf("rabbitmq: %s nacked by the broker", msgs[i].ID)
		}
	}
	r.mu.Lock()
	r.produced = append(r.produced, msgs...)
	r.mu.Unlock()
	return nil
}

func (r *rabbitEnv) producedSoFar() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]message(nil), r.produced...)
}

func (r *rabbitEnv) sidecarYAML(appURL, dedupPath string) (string, []string) {
	return sidecarYAML("rabbitmq", "    queue: "+r.queue+"\n    prefetch: 64\n    message_id: message_id", appURL, e2eDelivery, dedupPath, ""), []string{"MQSIDECAR_SOURCE_RABBITMQ_URL=" + r.url} // the URL carries a password: environment, not file
}

// checkIntact checks that the durable queue survived a broker restart (passive declare). A
// single RabbitMQ 3.10 node has been seen to come back from SIGKILL without a durable
// queue declared seconds before (its boot log said "Recovering 0 queues"); that is the
// broker losing data, not the sidecar, and the failure says so.
func (r *rabbitEnv) checkIntact() error {
	ch, err := r.channel()
	if err == nil {
		_, err = ch.QueueDeclarePassive(r.queue, true, false, false, false, nil)
		if err != nil {
			r.mu.Lock()
			r.ch = nil // a failed passive declare closes the channel
			r.mu.Unlock()
		}
	}
	if err != nil {
		return fmt.Errorf("durable queue %s is gone after the broker restart: the broker lost it (see its log: rabbitmq.sh logs); this is not a sidecar failure: %w", r.queue, err)
	}
	return nil
}

// syncMetadata makes the node write its metadata log (where the durable queue's declaration
// lives) to disk. Mnesia buffers that log briefly; a SIGKILL right after the declaration has
// lost the queue (twice in five runs here, after which the broker held no such queue and
// the messages in it were gone). The crash test is about the sidecar, so it starts from a
// declaration the broker has really persisted.
func (r *rabbitEnv) syncMetadata() {
	r.t.Helper()
	if out, err := harness(r.t, time.Minute, "rabbitmq.sh", "ctl", "eval", "mnesia:sync_log()."); err != nil {
		r.t.Fatalf("%v\n%s", err, out)
	}
}

// RabbitMQ with prefetch > 1 promises no order (G3 in docs/guarantees.md).
func (r *rabbitEnv) orderPromised() bool { return false }

// counts returns the queue's ready and unacknowledged message counts from rabbitmqctl.
func (r *rabbitEnv) counts() (ready, unacked int, err error) {
	out, err := harness(r.t, time.Minute, "rabbitmq.sh", "ctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged")
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == r.queue {
			ready, err1 := strconv.Atoi(f[1])
			unacked, err2 := strconv.Atoi(f[2])
			if err := errors.Join(err1, err2); err != nil {
				return 0, 0, fmt.Errorf("list_queues line %q: %w", line, err)
			}
			return ready, unacked, nil
		}
	}
	return 0, 0, fmt.Errorf("queue %s not in list_queues output:\n%s", r.queue, out)
}

func (r *rabbitEnv) waitSettled(timeout time.Duration, extra ...func() string) {
	r.t.Helper()
	waitFor(r.t, timeout, "queue "+r.queue+" empty with nothing unacknowledged", func() (bool, string) {
		ready, unacked, err := r.counts()
		if err != nil {
			return false, err.Error()
		}
		return ready == 0 && unacked == 0, fmt.Sprintf("ready %d unacked %d", ready, unacked)
	}, extra...)
}

func (r *rabbitEnv) checkSettled() error {
	ready, unacked, err := r.counts()
	if err != nil {
		return err
	}
	if ready != 0 || unacked != 0 {
		return fmt.Errorf("queue %s: ready %d unacked %d, want 0 and 0", r.queue, ready, unacked)
	}
	return nil
}

// ackViolations: every copy of an ID the app has not answered 2xx must still be in the
// queue (ready or unacked). The produced list is read first and the 2xx set last, so
// concurrent production and delivery cannot cause a false alarm.
func (r *rabbitEnv) ackViolations(ok func() map[string]bool) ([]string, error) {
	produced := r.producedSoFar()
	ready, unacked, err := r.counts()
	if err != nil {
		return nil, err
	}
	done := ok()
	need := 0
	for _, m := range produced {
		if !done[m.ID] {
			need++
		}
	}
	if ready+unacked < need {
		return []string{fmt.Sprintf("queue %s holds %d messages (ready %d, unacked %d) but %d copies of IDs the app never answered 2xx were produced: some were acknowledged",
			r.queue, ready+unacked, ready, unacked, need)}, nil
	}
	return nil, nil
}

// rabbitmqctl starts an Erlang VM per call (~1 s of CPU): sample rarely.
func (r *rabbitEnv) sampleEvery() time.Duration { return 3 * time.Second }

// TestRabbitMQE2EKillRestart: ~3000 IDs plus ~10% producer duplicates on a durable queue, an
// app failing ~10% of first attempts, the sidecar killed with SIGKILL four times mid-stream
// and restarted; at the end the queue is empty with nothing unacknowledged.
func TestRabbitMQE2EKillRestart(t *testing.T) {
	r := newRabbitE2E(t, "kill")
	runKillRestart(t, r, killScenario{
		messages: 3000, keys: 64, dupShare: 0.1, failPerK: 100, kills: 4,
		appDelay: 500 * time.Microsecond, timeout: 2 * time.Minute,
	})
}

// TestRabbitMQE2EBrokerRestart: the node is stopped gracefully mid-stream and started again
// with its data once the sidecar reported not ready.
func TestRabbitMQE2EBrokerRestart(t *testing.T) {
	r := newRabbitE2E(t, "brestart")
	runBrokerRestart(t, r, "broker stop/start", true, stopStart(t, "rabbitmq.sh"))
}

// TestRabbitMQE2EBrokerCrash: the node is killed with SIGKILL mid-stream and started again
// with its data (harness restart --hard). /readyz may or may not notice a short outage; the
// sidecar must recover and lose nothing.
func TestRabbitMQE2EBrokerCrash(t *testing.T) {
	r := newRabbitE2E(t, "bcrash")
	r.syncMetadata()
	runBrokerRestart(t, r, "broker kill-9/restart", false, func(*sidecarProc, func() string) {
		harnessVerb(t, "rabbitmq.sh", "restart", "--hard")
	})
}

// TestRabbitMQE2EAppDown: the app answers 503 for 10 seconds mid-stream; every message it has
// not answered 2xx stays in the queue (ready or unacked) meanwhile.
func TestRabbitMQE2EAppDown(t *testing.T) {
	r := newRabbitE2E(t, "appdown")
	runAppDown(t, r, appDown503, 10*time.Second)
}
