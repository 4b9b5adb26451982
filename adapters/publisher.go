package adapters

import (
	"context"
	"errors"
)

// The publish contract: the producer side, what every broker's publisher implements and the
// publish endpoint (package publish) calls. One rule for all brokers: Publish returns a nil
// error only after the broker confirmed the message durable by its own strongest
// acknowledgement (Kafka: acks=all from an idempotent producer; RabbitMQ: a publisher
// confirm of a persistent, mandatory message that was routed; RocketMQ: a synchronous
// send answered SEND_OK). Anything less is an error, classified below, so the endpoint
// never answers 2xx for a message the broker may lose.
//
// Lifecycle as for sources (internal/lifecycle): the constructor validates and starts no
// goroutine; Run(ctx) owns the connection; Publish may be called before Run (it fails with
// ErrUnavailable or waits, bounded by its ctx) and concurrently.

// OutMessage is one message the app asked to publish.
type OutMessage struct {
	// Topic is the Kafka or RocketMQ topic, or the RabbitMQ exchange ("" = the default exchange).
	Topic string
	// RoutingKey is the RabbitMQ routing key; unused by the other brokers.
	RoutingKey string
	// ID is the message ID written where the consumer side reads its dedup key
	// (docs/guarantees.md, "Message IDs"); never empty.
	ID string
	// Key is the ordering key: the Kafka record key, the RocketMQ message keys; "" = none.
	Key string
	// ContentType is written as the consumer side reads it back (Kafka and RocketMQ: a
	// content-type header/property; RabbitMQ: the content_type property); "" = none.
	ContentType string
	// Headers become record headers / AMQP headers / RocketMQ user properties, in order.
	Headers []Header
	// Payload is sent unchanged.
	Payload []byte
}

// Receipt is what the broker confirmed: where the message is and what made it durable.
type Receipt struct {
	// Broker is "kafka", "rabbitmq" or "rocketmq".
	Broker string `json:"broker"`
	// Topic (exchange) and RoutingKey as sent.
	Topic      string `json:"topic"`
	RoutingKey string `json:"routing_key,omitempty"`
	// ID is the message ID on the wire (OutMessage.ID).
	ID string `json:"id"`
	// Partition and Offset: Kafka partition and offset; RocketMQ queue ID and queue offset.
	// Absent for RabbitMQ.
	Partition *int32 `json:"partition,omitempty"`
	Offset    *int64 `json:"offset,omitempty"`
	// BrokerMessageID is the broker's own ID for the message (RocketMQ's offset message ID),
	// when it gives one.
	BrokerMessageID string `json:"broker_message_id,omitempty"`
	// Durability lists the facts known when the broker confirmed, e.g. "acks=all",
	// "idempotent", "publisher-confirm", "persistent", "SEND_OK".
	Durability []string `json:"durability"`
}

// Publisher is one broker's producer side.
type Publisher interface {
	// Publish sends m and returns once the broker confirmed it durable, or an error that
	// errors.Is one of the Err* below (ErrUnavailable when it cannot tell).
	Publish(ctx context.Context, m OutMessage) (Receipt, error)
	// Run owns the broker connection (internal/lifecycle).
	Run(ctx context.Context) error
	// Close flushes nothing unconfirmed into a 2xx: in-flight Publish calls return errors.
	Close(ctx context.Context) error
}

// Publish errors. The endpoint maps each to one HTTP answer.
var (
	// ErrUnknownTopic: the topic or exchange does not exist (404). Nothing was stored.
	ErrUnknownTopic = errors.New("unknown topic")
	// ErrUnroutable: the broker took the message but no queue did (RabbitMQ mandatory
	// return), so nothing will consume it (422). Retrying changes nothing until a queue is bound.
	ErrUnroutable = errors.New("unroutable: no queue took the message")
	// ErrRejected: the broker refused the message (RabbitMQ nack, Kafka a non-retriable
	// error such as a record too large, RocketMQ a refused send) — not stored.
	ErrRejected = errors.New("rejected by the broker")
	// ErrUnavailable: the broker could not be reached or the send did not leave; nothing
	// was stored and a retry is safe (503).
	ErrUnavailable = errors.New("broker unavailable")
	// ErrOutcomeUnknown: the message may or may not be stored (a timeout after the send
	// left, a connection lost before the confirm, RocketMQ FLUSH_DISK_TIMEOUT,
	// FLUSH_SLAVE_TIMEOUT or SLAVE_NOT_AVAILABLE: stored, durability not confirmed) (504).
	// A retry with the same ID is safe: the consumer side removes the copy.
	ErrOutcomeUnknown = errors.New("outcome unknown")
)
