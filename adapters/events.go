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

// QueueGauges is the extension of Events through which a source reports what its broker
// says about the queues it consumes. A source finds it by a type assertion on its Events
// (*metrics.Metrics implements it), so an Events without it simply gets no such reports.
// Labels stay bounded by the configuration: the configured queue or topic, the broker
// names and queue IDs of that topic; never a message's coordinates.
type QueueGauges interface {
	// SetQueueDepth reports a RabbitMQ queue's depth and consumers.
	SetQueueDepth(queue string, d QueueDepth)
	// SetQueueLag reports, for each message queue this replica owns now (RocketMQ), the
	// broker's max offset minus the consumer offset; a queue missing from lag is owned no
	// longer.
	SetQueueLag(lag map[QueueID]int64)
}

// QueueDepth is what a broker reports of one queue.
type QueueDepth struct {
	// Ready is the messages ready for delivery; Consumers the consumers subscribed (this
	// replica's and every other).
	Ready     int64
	Consumers int
	// Unacked is the messages delivered and not yet acknowledged, when HasUnacked (the
	// management API reports it; a passive queue.declare does not).
	Unacked    int64
	HasUnacked bool
}

// QueueID names one message queue of a RocketMQ topic.
type QueueID struct {
	Topic, Broker string
	ID            int
}
