package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// request is one publish as read from HTTP.
type request struct {
	m adapters.OutMessage
	// keyed: the ID came from the client (Idempotency-Key or ce-id), so it is remembered.
	keyed bool
}

// errClientGone: the request's body did not arrive whole; nothing is sent.
var errClientGone = fmt.Errorf("%w: the client went away before its request arrived; nothing was sent", ErrBadRequest)

// read reads the request into a message for topic (routing key rk): the body up to
// publish.max_message_bytes, the ID, the ordering key and the headers. Nothing is sent.
func (s *Server) read(w http.ResponseWriter, r *http.Request, topic, rk string) (request, error) {
	var q request
	max := int64(s.opts.Settings.MaxMessageBytes)
	if r.ContentLength > max {
		return q, fmt.Errorf("%w: %d bytes, publish.max_message_bytes is %d", ErrTooLarge, r.ContentLength, max)
	}
	body, err := readBody(w, r, max)
	if err != nil {
		return q, err
	}
	if topic == "" {
		return q, fmt.Errorf("%w: the path names no topic", ErrBadRequest)
	}
	q.m = adapters.OutMessage{
		Topic: topic, RoutingKey: rk, Payload: body,
		Key:         r.Header.Get("Ce-Partitionkey"),
		ContentType: r.Header.Get("Content-Type"),
		Headers:     messageHeaders(r.Header),
	}
	q.m.ID = r.Header.Get(HeaderIdempotencyKey)
	if q.m.ID == "" {
		q.m.ID = r.Header.Get("Ce-Id")
	}
	if q.keyed = q.m.ID != ""; !q.keyed {
		q.m.ID = newID()
	}
	if len(q.m.ID) > MaxKeyLen {
		return q, fmt.Errorf("%w: the idempotency key has %d bytes, at most %d are allowed", ErrBadRequest, len(q.m.ID), MaxKeyLen)
	}
	return q, nil
}

// readBody reads the request's body, at most max bytes: a body of a declared length (at
// most max, read checked it) into one buffer of that size, a chunked one growing as it
// comes.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength >= 0 {
		// net/http's body ends at Content-Length: a shorter body is an unexpected EOF.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, errClientGone
		}
		return body, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, fmt.Errorf("%w: over publish.max_message_bytes (%d)", ErrTooLarge, max)
		}
		return nil, errClientGone
	}
	return body, nil
}

// publish sends q (or answers it from the idempotency record) within publish.timeout and
// r's life: a client gone before the send leaves means nothing is sent.
func (s *Server) publish(r *http.Request, q *request) (rc adapters.Receipt, replayed bool, err error) {
	start := s.opts.Now()
	defer func() { s.m.observe(q.m.Topic, err, replayed, s.opts.Now().Sub(start)) }()
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.Settings.Timeout)
	defer cancel()
	held, hash := false, ""
	if q.keyed && s.opts.Records != nil {
		hash = requestHash(&q.m)
		replay, err := s.claim(ctx, q.m.ID, hash)
		if err != nil {
			return rc, false, err
		}
		if replay != nil {
			return *replay, true, nil
		}
		held = true
	}
	if err := r.Context().Err(); err != nil {
		if held {
			s.release(q.m.ID)
		}
		return rc, false, fmt.Errorf("%w: %w", adapters.ErrUnavailable, errClientGone)
	}
	rc, err = s.opts.Publisher.Publish(ctx, q.m)
	if err != nil {
		if held {
			s.release(q.m.ID)
		}
		return rc, false, err
	}
	if held {
		cctx, cancel := context.WithTimeout(context.Background(), storeWait)
		defer cancel()
		if err := s.confirm(cctx, q.m.ID, hash, rc); err != nil {
			// The message is durable; only the memory of the key is missing, so a retry
			// sends again with the same ID and the consumer side removes the copy.
			s.log.Warn("the broker confirmed a publish, but its idempotency key could not be recorded", "error", err, "topic", q.m.Topic)
		}
	}
	return rc, false, nil
}

// storeWait bounds the store write that follows a publish (confirm), which must not be
// cut short by the client's departure.
const storeWait = 5 * time.Second

// destination is the request's topic (exchange) and routing key: RabbitMQ takes
// {exchange}/{routing-key} from the path, or the routing key from Mqsidecar-Routing-Key.
func (s *Server) destination(r *http.Request) (topic, routingKey string) {
	topic, routingKey = r.PathValue("topic"), r.Header.Get(HeaderRoutingKey)
	if s.opts.Broker == "rabbitmq" {
		if ex, key, ok := strings.Cut(topic, "/"); ok {
			topic, routingKey = ex, key
		}
	}
	return topic, routingKey
}

// publishNative serves POST /v1/publish/{topic}: 200 and the Receipt, or a Problem.
func (s *Server) publishNative(w http.ResponseWriter, r *http.Request) {
	topic, rk := s.destination(r)
	q, err := s.read(w, r, topic, rk)
	if err != nil {
		s.m.observe(topic, err, false, 0)
		WriteError(w, err, "")
		return
	}
	rc, replayed, err := s.publish(r, &q)
	if err != nil {
		WriteError(w, err, q.m.ID)
		return
	}
	h := w.Header()
	h[HeaderMessageID] = []string{rc.ID} // canonical names: no Set, no copy of the name
	if replayed {
		h[HeaderReplayed] = trueValue
	}
	writeJSON(w, http.StatusOK, rc)
}
