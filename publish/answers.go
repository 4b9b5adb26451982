package publish

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Errors of the endpoint itself, beside the publisher's (adapters.Err*).
var (
	// ErrTooLarge: the payload is over publish.max_message_bytes (413); nothing was sent.
	ErrTooLarge = errors.New("payload too large")
	// ErrInFlight: a request with the same idempotency key is being published (409).
	ErrInFlight = errors.New("a publish with this idempotency key is in flight")
	// ErrKeyReused: the idempotency key was used for another payload or topic (422).
	ErrKeyReused = errors.New("idempotency key reused with a different payload")
	// ErrBadRequest: the request cannot be published as it is (400).
	ErrBadRequest = errors.New("bad request")
	// ErrStore: the store that remembers idempotency keys failed; nothing was sent (503).
	ErrStore = errors.New("idempotency store unavailable")
)

// Status returns the HTTP status for a publish error: the one mapping of every error of
// the publish contract (adapters.Err*) and of this package to an answer. The transactions
// handler answers with it too.
func Status(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, adapters.ErrUnknownTopic):
		return http.StatusNotFound
	case errors.Is(err, ErrInFlight):
		return http.StatusConflict
	case errors.Is(err, ErrKeyReused), errors.Is(err, adapters.ErrUnroutable), errors.Is(err, adapters.ErrRejected):
		return http.StatusUnprocessableEntity
	case errors.Is(err, adapters.ErrOutcomeUnknown):
		return http.StatusGatewayTimeout
	case errors.Is(err, adapters.ErrUnavailable), errors.Is(err, ErrStore):
		return http.StatusServiceUnavailable
	}
	// Anything unclassified may have left: say so rather than claim it did not.
	return http.StatusGatewayTimeout
}

// Outcome is the metrics label of err: ok, too_large, bad_request, unknown_topic, in_flight,
// key_reused, unroutable, rejected, outcome_unknown, unavailable, store.
func Outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrBadRequest):
		return "bad_request"
	case errors.Is(err, adapters.ErrUnknownTopic):
		return "unknown_topic"
	case errors.Is(err, ErrInFlight):
		return "in_flight"
	case errors.Is(err, ErrKeyReused):
		return "key_reused"
	case errors.Is(err, adapters.ErrUnroutable):
		return "unroutable"
	case errors.Is(err, adapters.ErrRejected):
		return "rejected"
	case errors.Is(err, adapters.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, ErrStore):
		return "store"
	}
	return "outcome_unknown"
}

// Problem is the body of an error answer: the status, the outcome and what happened.
type Problem struct {
	Status  int    `json:"status"`
	Outcome string `json:"outcome"`
	Error   string `json:"error"`
	// ID is the message ID, when the request got that far; a retry should reuse it.
	ID string `json:"id,omitempty"`
}

// WriteError answers err with its status (Status) and a Problem body naming it; id is
// the message ID ("" = none yet).
func WriteError(w http.ResponseWriter, err error, id string) {
	st := Status(err)
	if st == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, st, Problem{Status: st, Outcome: Outcome(err), Error: err.Error(), ID: id})
}

func writeProblem(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, Problem{Status: status, Outcome: "unavailable", Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
