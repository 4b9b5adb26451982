package rabbitmq

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/ascii"
)

// pending is the adapter's side of a handed-out delivery.
type pending struct {
	sess *session
	tag  uint64
	msg  *amqp.Delivery // original properties and headers, for the dead-letter copy
	// resolved is set by the first of Settle and a nack-mode DeadLetter; only that one
	// reaches the broker.
	resolved atomic.Bool
}

// newDelivery converts an AMQP delivery and registers it as in flight.
func (s *Source) newDelivery(sess *session, m *amqp.Delivery) *adapters.Delivery {
	count := deliveryCount(m.Headers)
	d := &adapters.Delivery{
		ID:            s.messageID(m),
		Payload:       m.Body,
		Headers:       headersOf(m),
		ContentType:   m.ContentType,
		Source:        s.source,
		Lane:          s.lane,
		DeliveryCount: count,
		Redelivered:   m.Redelivered || count > 0,
		// The channel's end fences the delivery: the broker requeues it for another
		// consumer, and an acknowledgement can no longer reach the broker.
		Fenced: sess.dead,
	}
	if !m.Timestamp.IsZero() && m.Timestamp.Unix() != 0 {
		d.Time = m.Timestamp
	}
	p := &pending{sess: sess, tag: m.DeliveryTag, msg: m}
	d.Ack = func(err error) { s.settle(d, p, err) }
	s.inflight.Store(d, p)
	return d
}

// settle translates the ack gate's decision; called once per delivery by Settle.
func (s *Source) settle(d *adapters.Delivery, p *pending, err error) {
	s.inflight.Delete(d)
	if !p.resolved.CompareAndSwap(false, true) {
		return // already rejected by a nack-mode DeadLetter
	}
	if s.killed.Load() || !p.sess.enqueue(ackOp{tag: p.tag, ack: err == nil}) {
		s.event(EventStaleSettle)
		s.log.Debug("rabbitmq: settlement dropped, its channel is closed; the broker redelivers the message",
			slog.String("id", d.ID), slog.Uint64("generation", p.sess.gen), slog.Bool("done", err == nil))
	}
}

// messageID returns the configured ID, or a generated unique one (see the package doc for
// why not a content hash).
func (s *Source) messageID(m *amqp.Delivery) string {
	var id string
	if s.idHeader == "" {
		id = m.MessageId
	} else if v, ok := lookupHeader(m.Headers, s.idHeader); ok {
		id = stringify(v)
	}
	if id != "" {
		return id
	}
	s.event(EventMissingID)
	now := time.Now().UnixNano()
	last := s.idWarn.Load()
	if now-last >= int64(time.Minute) && s.idWarn.CompareAndSwap(last, now) {
		where := "the message_id property"
		if s.idHeader != "" {
			where = "header " + strconv.Quote(s.idHeader)
		}
		s.log.Warn("rabbitmq: message without an ID; using a generated one, so redeliveries of it are not deduplicated (logged at most once a minute)",
			slog.String("expected_in", where))
	}
	return "rabbitmq-generated:" + randHex(16)
}

// lookupHeader finds a header by exact name, else case-insensitively (AMQP header names are
// case-sensitive, HTTP-minded producers are not).
func lookupHeader(t amqp.Table, name string) (any, bool) {
	if v, ok := t[name]; ok {
		return v, true
	}
	for k, v := range t {
		if ascii.EqualFold(k, name) {
			return v, true
		}
	}
	return nil, false
}

// deliveryCount reads x-delivery-count (quorum queues); 0 when absent or unreadable.
func deliveryCount(t amqp.Table) int {
	v, ok := t["x-delivery-count"]
	if !ok {
		return 0
	}
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case int32:
		n = int64(x)
	case int16:
		n = int64(x)
	case int8:
		n = int64(x)
	case int:
		n = int64(x)
	case uint32:
		n = int64(x)
	case uint16:
		n = int64(x)
	case byte:
		n = int64(x)
	case string:
		n, _ = strconv.ParseInt(x, 10, 64)
	default:
		return 0
	}
	if n < 0 {
		return 0
	}
	return int(min(n, math.MaxInt32))
}

// headersOf flattens the application headers (sorted by name) and the set properties.
func headersOf(m *amqp.Delivery) []adapters.Header {
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	hs := make([]adapters.Header, 0, len(names)+8)
	for _, k := range names {
		hs = append(hs, adapters.Header{Key: k, Value: stringify(m.Headers[k])})
	}
	add := func(k, v string) {
		if v != "" {
			hs = append(hs, adapters.Header{Key: k, Value: v})
		}
	}
	add("amqp-correlation-id", m.CorrelationId)
	add("amqp-reply-to", m.ReplyTo)
	add("amqp-type", m.Type)
	add("amqp-app-id", m.AppId)
	add("amqp-user-id", m.UserId)
	add("amqp-message-id", m.MessageId)
	add("amqp-content-encoding", m.ContentEncoding)
	if m.Priority != 0 {
		add("amqp-priority", strconv.Itoa(int(m.Priority)))
	}
	add("amqp-expiration", m.Expiration)
	add("amqp-exchange", m.Exchange)
	add("amqp-routing-key", m.RoutingKey)
	return hs
}

// stringify renders an AMQP field value as header text.
func stringify(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
		return base64.StdEncoding.EncodeToString(x)
	case bool:
		return strconv.FormatBool(x)
	case int8:
		return strconv.FormatInt(int64(x), 10)
	case int16:
		return strconv.FormatInt(int64(x), 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	case byte:
		return strconv.FormatUint(uint64(x), 10)
	case uint16:
		return strconv.FormatUint(uint64(x), 10)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp.Decimal:
		return decimalString(x)
	case amqp.Table, []any:
		b, err := json.Marshal(jsonable(x))
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	default:
		return fmt.Sprint(x)
	}
}

// jsonable converts nested AMQP values into what encoding/json renders sensibly.
func jsonable(v any) any {
	switch x := v.(type) {
	case amqp.Table:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonable(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonable(e)
		}
		return out
	case []byte, time.Time, amqp.Decimal:
		return stringify(x)
	default:
		return x
	}
}

func decimalString(d amqp.Decimal) string {
	if d.Scale == 0 {
		return strconv.FormatInt(int64(d.Value), 10)
	}
	r := new(big.Rat).SetFrac(big.NewInt(int64(d.Value)), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(d.Scale)), nil))
	return r.FloatString(int(d.Scale))
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
