package rabbitmq

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// DurabilityParams is what CheckDurability needs: the AMQP connection (as the sidecar
// makes it), the queue and dead-letter settings, and optionally the management API.
type DurabilityParams struct {
	URL string
	TLS *tls.Config
	// Queue is the queue consumed.
	Queue string
	// DeadLetterMode and DeadLetterTarget are the sidecar's settings (source.rabbitmq.
	// dead_letter_mode, delivery.dead_letter.target).
	DeadLetterMode, DeadLetterTarget string
	// ManagementURL ("" = none) is the management HTTP API's base URL
	// ("http://host:15672"); without it, what AMQP cannot tell is unknown.
	ManagementURL                      string
	ManagementUser, ManagementPassword string
	// Timeout bounds the connection and each request; 0 means 5 s.
	Timeout time.Duration
}

// ErrUnreachable marks a durability check that could not connect to the broker.
var ErrUnreachable = errors.New("rabbitmq: unreachable")

// mgmtQueue is the part of the management API's queue object read here.
type mgmtQueue struct {
	Durable   bool           `json:"durable"`
	Type      string         `json:"type"`
	Arguments map[string]any `json:"arguments"`
	Policy    string         `json:"policy"`
	Effective map[string]any `json:"effective_policy_definition"`
}

// CheckDurability returns, for the queue: queue_durable, queue_type (quorum or stream are
// ok; classic keeps one copy on one node) — read through the management API, unknown
// without it (a passive declare tells only that the queue exists); and for dead letters:
// in publish mode, dead_letter_exchange (the target exchange exists, passive declare) and
// publisher_confirms (the sidecar publishes persistent copies with confirms); in nack mode,
// dead_letter_exchange (the queue has one, by argument or policy) and dead_letter_strategy
// (at-least-once, quorum queues only; otherwise the broker's dead-lettering is at most
// once). A missing queue gives an unknown "queue" check. An unreachable broker is an error
// wrapping ErrUnreachable.
func CheckDurability(ctx context.Context, p DurabilityParams) ([]adapters.DurabilityCheck, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(d), time.Millisecond))
	}
	dl, err := parseDeadLetter(p.DeadLetterMode, p.DeadLetterTarget, p.Queue)
	if err != nil {
		return nil, err
	}
	uri, err := amqp.ParseURI(p.URL)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: url: not a valid AMQP URL: %v", redactURLError(err))
	}
	addr := net.JoinHostPort(uri.Host, fmt.Sprint(uri.Port))
	cfg := amqp.Config{Dial: amqp.DefaultDial(timeout), Properties: amqp.Table{"connection_name": "mqsidecar doctor"}}
	if p.TLS != nil {
		cfg.TLSClientConfig = p.TLS.Clone()
	}
	conn, err := amqp.DialConfig(p.URL, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s (vhost %q, user %q): %w", ErrUnreachable, addr, uri.Vhost, uri.Username, redactURLError(err))
	}
	defer conn.Close()

	exists := func(declare func(*amqp.Channel) error) (bool, error) {
		err := onThrowaway(conn, declare)
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return false, nil
		}
		return err == nil, err
	}
	ok, err := exists(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(p.Queue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: check queue %q on vhost %q: %w", p.Queue, uri.Vhost, err)
	}
	if !ok {
		return []adapters.DurabilityCheck{{
			Check: "queue", Target: p.Queue, Value: "does not exist", Source: "AMQP (passive declare)", Verdict: adapters.VerdictUnknown,
			Fix: fmt.Sprintf("declare it as a quorum queue: rabbitmqadmin declare queue --vhost %q name=%s durable=true queue_type=quorum", uri.Vhost, p.Queue),
		}}, nil
	}

	var q *mgmtQueue
	var mgmtErr error
	if p.ManagementURL != "" {
		q, mgmtErr = getQueue(ctx, p, uri.Vhost, timeout)
	}
	out := queueChecks(p.Queue, q, mgmtErr)
	switch dl.mode {
	case modePublish:
		ec := adapters.DurabilityCheck{Check: "dead_letter_exchange", Target: dl.exchange, Value: "exists", Source: "AMQP (passive declare)", Verdict: adapters.VerdictOK}
		if dl.exchange == "" {
			ec.Target, ec.Value, ec.Source = "(default exchange)", "routes to queue "+dl.routingKey, "AMQP"
		} else {
			found, err := exists(func(ch *amqp.Channel) error {
				return ch.ExchangeDeclarePassive(dl.exchange, "direct", true, false, false, false, nil)
			})
			switch {
			case !found && err == nil:
				ec.Value, ec.Verdict = "does not exist", adapters.VerdictAtRisk
				ec.Fix = fmt.Sprintf("declare it and bind a durable quorum queue to it: rabbitmqadmin declare exchange --vhost %q name=%s type=direct durable=true", uri.Vhost, dl.exchange)
			case err != nil:
				ec.Value, ec.Verdict, ec.Fix = "", adapters.VerdictUnknown, err.Error()
			}
		}
		out = append(out, ec, adapters.DurabilityCheck{
			Check: "publisher_confirms", Target: ec.Target, Value: "on (persistent messages)", Source: "sidecar (dead-letter publisher)", Verdict: adapters.VerdictOK,
		})
	case modeNack:
		out = append(out, nackChecks(p.Queue, uri.Vhost, q, mgmtErr)...)
	}
	return out, nil
}

// unknownCheck is a check AMQP cannot answer: unknown, with what would make it readable.
func unknownCheck(check, target string, mgmtErr error) adapters.DurabilityCheck {
	c := adapters.DurabilityCheck{Check: check, Target: target, Source: "AMQP", Verdict: adapters.VerdictUnknown,
		Fix: "AMQP cannot tell: set source.rabbitmq.management_url (and its credentials) to read it from the management API"}
	if mgmtErr != nil {
		c.Source, c.Fix = mgmtSource, "the management API did not answer: "+mgmtErr.Error()
	}
	return c
}

const mgmtSource = "management API"

// queueChecks judges the queue as the management API describes it (q nil: unknown).
func queueChecks(queue string, q *mgmtQueue, mgmtErr error) []adapters.DurabilityCheck {
	if q == nil {
		return []adapters.DurabilityCheck{unknownCheck("queue_durable", queue, mgmtErr), unknownCheck("queue_type", queue, mgmtErr)}
	}
	dc := adapters.DurabilityCheck{Check: "queue_durable", Target: queue, Value: fmt.Sprint(q.Durable), Source: mgmtSource, Verdict: adapters.VerdictOK}
	if !q.Durable {
		dc.Verdict = adapters.VerdictAtRisk
		dc.Fix = "a queue's durability cannot change: declare a durable quorum queue (x-queue-type=quorum), move bindings and consumers to it, delete this one (its messages vanish on a broker restart)"
	}
	typ := q.Type
	if typ == "" {
		typ = "classic"
	}
	tc := adapters.DurabilityCheck{Check: "queue_type", Target: queue, Value: typ, Source: mgmtSource, Verdict: adapters.VerdictOK}
	if typ != "quorum" && typ != "stream" {
		tc.Verdict = adapters.VerdictAtRisk
		tc.Fix = "declare a quorum queue (x-queue-type=quorum; a queue's type cannot change) and move to it: a " + typ +
			" queue keeps its messages on one node and loses those published as transient on a restart"
		if mode, src, ok := queueSetting(q, "ha-mode"); ok && strings.HasPrefix(src, "policy") {
			tc.Value = fmt.Sprintf("classic, mirrored (ha-mode %s, %s)", mode, src)
			tc.Fix = "declare a quorum queue (x-queue-type=quorum) and move to it: classic mirrored queues are deprecated, can lose confirmed messages on failover and are gone in RabbitMQ 4"
		}
	}
	return []adapters.DurabilityCheck{dc, tc}
}

// nackChecks judges the broker's own dead-lettering (dead_letter_mode nack).
func nackChecks(queue, vhost string, q *mgmtQueue, mgmtErr error) []adapters.DurabilityCheck {
	if q == nil {
		return []adapters.DurabilityCheck{unknownCheck("dead_letter_exchange", queue, mgmtErr), unknownCheck("dead_letter_strategy", queue, mgmtErr)}
	}
	ec := adapters.DurabilityCheck{Check: "dead_letter_exchange", Target: queue, Verdict: adapters.VerdictOK}
	if v, src, ok := queueSetting(q, "dead-letter-exchange"); ok {
		ec.Value, ec.Source = v, src
	} else {
		ec.Value, ec.Source, ec.Verdict = "none", mgmtSource, adapters.VerdictAtRisk
		ec.Fix = fmt.Sprintf(`dead_letter_mode nack drops rejected messages without one: rabbitmqctl set_policy --vhost %q --apply-to queues %s-dlx '^%s$' '{"dead-letter-exchange":"<exchange>"}'`, vhost, queue, queue)
	}
	sc := adapters.DurabilityCheck{Check: "dead_letter_strategy", Target: queue, Value: "at-most-once", Source: mgmtSource, Verdict: adapters.VerdictAtRisk,
		Fix: "use a quorum queue with dead-letter-strategy at-least-once and overflow reject-publish (policy or x- arguments), or dead_letter_mode publish (the sidecar publishes with confirms)"}
	if v, src, ok := queueSetting(q, "dead-letter-strategy"); ok {
		sc.Value, sc.Source = v, src
	}
	overflow, _, _ := queueSetting(q, "overflow")
	if q.Type == "quorum" && sc.Value == "at-least-once" && overflow == "reject-publish" {
		sc.Verdict, sc.Fix = adapters.VerdictOK, ""
	}
	return []adapters.DurabilityCheck{ec, sc}
}

// queueSetting returns the queue's x-<key> argument, else its policy's key, with where it
// came from.
func queueSetting(q *mgmtQueue, key string) (string, string, bool) {
	if v, ok := q.Arguments["x-"+key]; ok {
		return fmt.Sprint(v), "queue argument x-" + key, true
	}
	if v, ok := q.Effective[key]; ok {
		return fmt.Sprint(v), "policy " + q.Policy, true
	}
	return "", "", false
}

// getQueue reads the queue from the management API.
func getQueue(ctx context.Context, p DurabilityParams, vhost string, timeout time.Duration) (*mgmtQueue, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: p.TLS}}
	var q mgmtQueue
	if err := mgmtGetQueue(ctx, client, p.ManagementURL, p.ManagementUser, p.ManagementPassword, vhost, p.Queue, &q); err != nil {
		return nil, err
	}
	return &q, nil
}

// mgmtGetQueue reads GET /api/queues/<vhost>/<queue> of the management API at base into
// out (JSON); user and password, when set, authenticate. Errors never contain the URL's
// user info.
func mgmtGetQueue(ctx context.Context, client *http.Client, base, user, password, vhost, queue string, out any) error {
	path := "/api/queues/" + url.PathEscape(vhost) + "/" + url.PathEscape(queue)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("management_url: %v", redactURLError(err))
	}
	if user != "" || password != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := client.Do(req)
	if err != nil {
		return redactURLError(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("management API answer: %w", err)
	}
	return nil
}
