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

// answers maps each publish error (adapters.Err* and this package's) to its HTTP status
// and metrics outcome; the first match wins.
var answers = []struct {
	err     error
	status  int
	outcome string
}{
	{ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{ErrBadRequest, http.StatusBadRequest, "bad_request"},
	{adapters.ErrUnknownTopic, http.StatusNotFound, "unknown_topic"},
	{ErrInFlight, http.StatusConflict, "in_flight"},
	{ErrKeyReused, http.StatusUnprocessableEntity, "key_reused"},
	{adapters.ErrUnroutable, http.StatusUnprocessableEntity, "unroutable"},
	{adapters.ErrRejected, http.StatusUnprocessableEntity, "rejected"},
	{adapters.ErrOutcomeUnknown, http.StatusGatewayTimeout, "outcome_unknown"},
	{adapters.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
	{ErrStore, http.StatusServiceUnavailable, "store"},
}

// Status returns the HTTP status for a publish error: the one mapping of every error of
// the publish contract (adapters.Err*) and of this package to an answer. The transactions
// handler answers with it too. Anything unclassified may have left: 504, rather than claim
// it did not.
func Status(err error) int {
	if err == nil {
		return http.StatusOK
	}
	for _, a := range answers {
		if errors.Is(err, a.err) {
			return a.status
		}
	}
	return http.StatusGatewayTimeout
}

// Outcome is the metrics label of err: ok, or the outcome of answers (outcome_unknown for
// anything unclassified).
func Outcome(err error) string {
	if err == nil {
		return "ok"
	}
	for _, a := range answers {
		if errors.Is(err, a.err) {
			return a.outcome
		}
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

// Header values shared by every answer (net/http only reads them).
var (
	jsonType  = []string{"application/json"}
	trueValue = []string{"true"}
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header()["Content-Type"] = jsonType
	if status != http.StatusOK {
		// Write sends 200 itself; a WriteHeader after Header makes net/http copy the
		// header map (its snapshot of what WriteHeader wrote), once per answer.
		w.WriteHeader(status)
	}
	_, _ = w.Write(append(b, '\n'))
}
