package adapters

// Broker durability (issue 15): each adapter package has a durability.go whose check reads
// what its broker will do with an acknowledged message — replication, flushing, queue type —
// and what the sidecar's own dead-letter producer asks for, and returns one DurabilityCheck
// per finding. Checks take plain parameters (addresses, names, credentials, *tls.Config), not
// configuration structs; package durability runs them (`mqsidecar doctor`, the periodic
// check of a running sidecar).

// Verdict is a check's outcome.
type Verdict string

// The verdicts. Unknown means the value could not be read with what the sidecar has (no
// management API, no permission): it is never guessed.
const (
	VerdictOK      Verdict = "ok"
	VerdictAtRisk  Verdict = "at risk"
	VerdictUnknown Verdict = "unknown"
)

// DurabilityCheck is one finding about one target.
type DurabilityCheck struct {
	// Check names what was checked, from a fixed set per broker ("replication_factor",
	// "queue_type", "flush_disk_type", ...): a metric label, so bounded.
	Check string `json:"check"`
	// Target is the topic, queue, exchange or broker the finding is about, named in the
	// configuration (or the broker of a configured topic).
	Target string `json:"target"`
	// Value is what was found ("1", "classic", "ASYNC_FLUSH"), "" when unknown.
	Value string `json:"value"`
	// Source says where the value came from: "topic", "broker default", "policy orders-ha",
	// "management API", "sidecar" (a setting of the sidecar's own producer) ...
	Source  string  `json:"source"`
	Verdict Verdict `json:"verdict"`
	// Fix is the exact command or setting that makes an at-risk or unknown finding ok; ""
	// when ok. For unknown, it says what would make the value readable.
	Fix string `json:"fix,omitempty"`
}
