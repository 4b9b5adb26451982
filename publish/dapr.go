package publish

import (
	"fmt"
	"net/http"
	"strings"
)

// Dapr's publish API (https://docs.dapr.io/reference/api/pubsub_api/): POST
// /v1.0/publish/{pubsubname}/{topic}[?metadata.<key>=<value>], 204 without a body on
// success, {"errorCode", "message"} on failure. Any pubsubname is accepted: the sidecar has
// one broker. Differences from Dapr, stated in the README: the body is sent unchanged
// (as Dapr does with metadata.rawPayload=true, with the CloudEvents attributes as ce-*
// headers instead of a JSON envelope), and the status codes are this endpoint's (503, 504,
// 404, 409, 413, 422), where Dapr answers 500 to every failure of the broker; a Dapr client
// treats every non-2xx as a failure, so it works unchanged.

// daprMetadata are the metadata.<key> query parameters with a meaning here; every other
// one becomes a message header <key>, as Dapr's Kafka component makes them record headers.
const (
	daprPartitionKey = "partitionKey"
	daprID           = "cloudevent.id"
	daprRawPayload   = "rawPayload"
	daprTTL          = "ttlInSeconds"
)

// daprError is Dapr's error body.
type daprError struct {
	ErrorCode string `json:"errorCode"`
	Message   string `json:"message"`
}

// publishDapr serves POST /v1.0/publish/{pubsub}/{topic}.
func (s *Server) publishDapr(w http.ResponseWriter, r *http.Request) {
	pubsub, topic := r.PathValue("pubsub"), r.PathValue("topic")
	fail := func(err error, id string) {
		if id != "" {
			w.Header().Set(HeaderMessageID, id)
		}
		writeJSON(w, Status(err), daprError{ErrorCode: "ERR_PUBSUB_PUBLISH_MESSAGE",
			Message: fmt.Sprintf("error when publish to topic %s in pubsub %s: %s", topic, pubsub, err)})
	}
	rk := r.Header.Get(HeaderRoutingKey)
	if s.opts.Broker == "rabbitmq" {
		if ex, key, ok := strings.Cut(topic, "/"); ok {
			topic, rk = ex, key
		}
	}
	q, err := s.read(w, r, topic, rk)
	if err != nil {
		s.m.observe(topic, err, false, 0)
		fail(err, "")
		return
	}
	keyedByHeader := q.keyed
	for name, vals := range r.URL.Query() {
		key, ok := strings.CutPrefix(name, "metadata.")
		if !ok || len(vals) == 0 {
			continue
		}
		switch key {
		case daprPartitionKey:
			q.m.Key = vals[0]
		case daprID:
			if !keyedByHeader && vals[0] != "" {
				q.m.ID, q.keyed = vals[0], true
			}
		case daprRawPayload, daprTTL:
		default:
			for _, v := range vals {
				q.m.Headers = append(q.m.Headers, headerOf(key, v))
			}
		}
	}
	if len(q.m.ID) > MaxKeyLen {
		fail(fmt.Errorf("%w: the message ID has %d bytes, at most %d are allowed", ErrBadRequest, len(q.m.ID), MaxKeyLen), "")
		return
	}
	rc, _, err := s.publish(r, &q)
	if err != nil {
		fail(err, q.m.ID)
		return
	}
	w.Header().Set(HeaderMessageID, rc.ID)
	w.WriteHeader(http.StatusNoContent)
}
