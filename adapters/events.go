package adapters

// Error kinds an adapter reports through Events.Error, the values of the kind label of
// mqsidecar_errors_total that belong to the brokers.
const (
	ErrorBroker     = "broker"             // a connection, start or fetch failure
	ErrorCommit     = "commit"             // an offset commit failed (Kafka)
	ErrorDeadLetter = "dead_letter"        // a dead-letter write was not confirmed
	ErrorMissingID  = "missing_message_id" // a message had no ID of the configured kind
)

// Events receives what an adapter reports for the sidecar's metrics, the same way for every
// broker. *metrics.Metrics implements it; NoEvents discards everything. Methods must be
// cheap and safe for concurrent use.
type Events interface {
	// SetSourceReady reports whether the source is connected and consuming.
	SetSourceReady(up bool)
	// Error counts one runtime error of the given kind (ErrorBroker, ...).
	Error(kind string)
	// SetConsumerLag reports the lag by topic of the partitions (queues) this replica owns
	// now; a topic missing from lag is owned no longer.
	SetConsumerLag(lag map[string]int64)
}

// NoEvents is the Events that discards everything: the default of every adapter, and what
// tests pass that do not look at events.
type NoEvents struct{}

// SetSourceReady implements Events.
func (NoEvents) SetSourceReady(bool) {}

// Error implements Events.
func (NoEvents) Error(string) {}

// SetConsumerLag implements Events.
func (NoEvents) SetConsumerLag(map[string]int64) {}
