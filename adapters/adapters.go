// Package adapters defines the broker-neutral source contract that every broker adapter
// (adapters/kafka, adapters/rabbitmq, adapters/rocketmq) implements, and that the ack gate
// (package ackgate) consumes.
//
// The contract is deliberately small, after Benthos' input: a Source hands out Deliveries
// with Read; every Delivery is settled exactly once with Delivery.Settle; the adapter
// translates the settlement to its broker (Kafka: mark the offset done and commit the
// contiguous prefix; RabbitMQ: basic.ack; RocketMQ: CONSUME_SUCCESS). Adapters make no
// decisions about retries, dead letters or duplicates: the ack gate decides, the adapter
// only translates. An adapter never acknowledges a message to its broker unless Settle(nil)
// was called for it.
//
// Lifecycle (one style for every long-lived part, see internal/lifecycle): an adapter's
// New validates and builds, contacts no broker and starts no goroutine of its own. Run(ctx)
// is the adapter's loop — connecting and reconnecting, periodic commits, health checks — on
// the caller's goroutine; the wiring (package sidecar) runs it under the sidecar's errgroup.
// Run returns nil once Close was called, or once ctx is done: cancelling ctx closes the
// source as Close does (bounded by CloseWait). It returns an error only when the adapter
// cannot go on, and runs at most once. Read, DeadLetter and Ready keep their meaning
// before and while Run runs; an adapter may hand out nothing until Run runs.
//
// Shutdown: the ack gate calls Read in a loop until it decides to stop (its context is
// cancelled). It then stops calling Read, waits for in-flight deliveries to settle (bounded
// by the shutdown timeout), and the wiring calls Close, which flushes pending
// acknowledgements, releases the connection and ends Run; only then is Run's context
// cancelled. Deliveries handed out but never settled are not acknowledged, so the broker
// redelivers them later.
package adapters

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"
)

// Errors shared by all adapters. Callers classify with errors.Is.
var (
	// ErrClosed is returned by Read after Close, and by Close when called again.
	ErrClosed = errors.New("source closed")

	// ErrNotDone is the settlement error for a delivery that was not completed (shutdown,
	// fencing, a retry the broker should perform). The adapter must not acknowledge it.
	ErrNotDone = errors.New("delivery not done")

	// ErrNoDeadLetter is returned by DeadLetter when no dead-letter target is configured.
	ErrNoDeadLetter = errors.New("no dead-letter target configured")

	// ErrStaleDelivery is returned (wrapped) by DeadLetter when the delivery can no longer
	// be settled — its channel or partition assignment is gone — so the broker will
	// redeliver it. Retrying is pointless; the gate abandons the delivery instead.
	ErrStaleDelivery = errors.New("delivery is stale: the broker will redeliver it")
)

// Header is one original message header or property, in broker order. Keys may repeat.
type Header struct {
	Key   string
	Value string
}

// Delivery is one message handed from an adapter to the ack gate.
//
// All fields are set by the adapter before Read returns and are read-only afterwards.
type Delivery struct {
	// ID is the deduplication key (docs/guarantees.md, "Message IDs"); never empty.
	ID string
	// Payload is the message body, pushed to the app unchanged.
	Payload []byte
	// Headers are the original headers/properties; the ack gate decides which to forward.
	Headers []Header
	// ContentType is the message's content type when the broker carries one, else "".
	ContentType string
	// Source is the CloudEvents source, e.g. "kafka://orders".
	Source string
	// Time is the broker timestamp; zero when unknown.
	Time time.Time
	// Key is the ordering key (Kafka key, RocketMQ keys); "" when the message has none.
	Key string
	// Lane names the broker's unit of order (Kafka topic/partition, RocketMQ message queue).
	// Deliveries of one lane are handed out in broker order. "" means the broker promises no
	// order (RabbitMQ with prefetch > 1), so the gate may process the delivery concurrently.
	Lane string
	// HasCoordinates reports whether Partition and Offset are meaningful.
	HasCoordinates bool
	// Partition and Offset are the broker coordinates (Kafka partition/offset, RocketMQ queue
	// id/queue offset), forwarded as ce-partition and ce-offset.
	Partition int32
	Offset    int64
	// DeliveryCount is the broker's own count of earlier deliveries of this message, when it
	// keeps one (RabbitMQ quorum x-delivery-count, RocketMQ reconsume times); 0 otherwise.
	DeliveryCount int
	// Redelivered is the broker's hint that this message may have been delivered before
	// (RabbitMQ's redelivered flag; Kafka: the offset lies below the high-water mark an
	// earlier owner of the partition reserved before pushing).
	Redelivered bool
	// Fenced, when not nil, is closed by the adapter the moment it can no longer
	// acknowledge this delivery: its Kafka partition is being revoked or was lost, its
	// RocketMQ queue was removed, its RabbitMQ channel closed. From then on the ack gate
	// starts no push of it and dead-letters nothing of it; a push already on the wire
	// finishes and its completion is recorded, and Settle is still called exactly once
	// (the adapter ignores it or acknowledges only what it still can). nil = never fenced.
	Fenced <-chan struct{}

	// Ack is set by the adapter and invoked exactly once through Settle.
	Ack func(err error)

	settled atomic.Bool
	dropped atomic.Bool
}

// MarkDropped is called by the ack gate before Settle(nil) when it drops the message
// (drop_after_max_attempts, or the app's DROP without a dead-letter target) instead of
// completing it.
func (d *Delivery) MarkDropped() { d.dropped.Store(true) }

// Dropped reports whether the gate dropped d: Settle(nil) still means "do not deliver it
// again", but a broker that can reject a message (Kafka share groups) rejects it instead
// of accepting it. Adapters whose broker has only one acknowledgement ignore it.
func (d *Delivery) Dropped() bool { return d.dropped.Load() }

// Settle reports the ack gate's decision to the adapter: nil means done (acknowledge to the
// broker), any error means not done (do not acknowledge; the broker redelivers). Only the
// first call has an effect; later calls are ignored, so a late completion can never
// acknowledge twice. Settle must not block on the network: adapters record the decision
// and acknowledge asynchronously (Kafka) or quickly (RabbitMQ basic.ack).
func (d *Delivery) Settle(err error) {
	if !d.settled.CompareAndSwap(false, true) {
		return
	}
	if d.Ack != nil {
		d.Ack(err)
	}
}

// Size is what d holds in memory, for the byte budget (delivery.max_buffer_bytes): its
// payload, key, ID and headers. Struct overhead is left out; it is part of the fixed
// overhead docs/guarantees.md (G4) states.
func (d *Delivery) Size() int64 {
	n := len(d.Payload) + len(d.Key) + len(d.ID) + len(d.ContentType)
	for _, h := range d.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return int64(n)
}

// Settled reports whether Settle has been called.
func (d *Delivery) Settled() bool { return d.settled.Load() }

// IsFenced reports whether d's Fenced channel is closed.
func (d *Delivery) IsFenced() bool {
	if d.Fenced == nil {
		return false
	}
	select {
	case <-d.Fenced:
		return true
	default:
		return false
	}
}

// Failure describes why a delivery is being dead-lettered; adapters copy it into headers or
// properties of the dead-letter copy (see FailureHeaders).
type Failure struct {
	// Reason is a short machine-readable cause: "permanent", "max_attempts", "dropped_by_app".
	Reason string
	// Status is the app's last HTTP status, 0 when there was none (timeout, refused).
	Status int
	// Error is the last error text.
	Error string
	// Attempts is the number of pushes made.
	Attempts int
	// Time is when the decision was made.
	Time time.Time
}

// Source is what an adapter implements.
type Source interface {
	// Run is the adapter's loop (package doc, Lifecycle): it returns nil once Close was
	// called or ctx is done (which closes the source), an error only when the adapter
	// cannot go on. It runs at most once; a second call returns an error.
	Run(ctx context.Context) error

	// Read blocks until the next delivery is available, ctx is done (returns ctx.Err()), or
	// the source is closed (returns ErrClosed). Connection loss is handled inside the
	// adapter (re-dial with backoff); Read keeps blocking meanwhile and Ready reports the
	// problem. Read is called from one goroutine at a time. Deliveries of one Lane are
	// returned in broker order.
	Read(ctx context.Context) (*Delivery, error)

	// DeadLetter writes d to the configured dead-letter target and returns nil only once the
	// broker confirmed the write. The ack gate then settles d with nil. It returns
	// ErrNoDeadLetter when no target is configured. Safe for concurrent use.
	DeadLetter(ctx context.Context, d *Delivery, f Failure) error

	// Ready reports nil when the adapter is connected to its broker and consuming, else an
	// error describing why not. It must not block for long (cache the answer).
	Ready() error

	// Close stops consumption, acknowledges what was settled as done, releases the
	// connection and ends Run. Deliveries not settled by then are not acknowledged. Close
	// blocks until done or ctx ends; it is safe to call more than once, and before Run.
	Close(ctx context.Context) error
}

// CloseWait bounds the Close that an adapter starts when its Run's context ends.
const CloseWait = 15 * time.Second

// FailureHeaders returns the headers every adapter attaches to a dead-letter copy: the
// original coordinates and the last failure. Adapters add broker-specific ones beside them.
func FailureHeaders(d *Delivery, f Failure) []Header {
	h := []Header{
		{"mqsidecar-dlq-reason", f.Reason},
		{"mqsidecar-dlq-status", strconv.Itoa(f.Status)},
		{"mqsidecar-dlq-error", f.Error},
		{"mqsidecar-dlq-attempts", strconv.Itoa(f.Attempts)},
		{"mqsidecar-dlq-time", f.Time.UTC().Format(time.RFC3339Nano)},
		{"mqsidecar-dlq-source", d.Source},
		{"mqsidecar-dlq-id", d.ID},
	}
	if d.HasCoordinates {
		h = append(h,
			Header{"mqsidecar-dlq-partition", strconv.FormatInt(int64(d.Partition), 10)},
			Header{"mqsidecar-dlq-offset", strconv.FormatInt(d.Offset, 10)})
	}
	return h
}

// LaneLimiter is implemented by sources that can hold back the deliveries of one Lane (a
// Kafka partition) while the ack gate already has as many of that lane in flight as it
// allows. Without it one stuck lane (a poison message being retried) would collect every
// in-flight slot and stall the others.
type LaneLimiter interface {
	// LimitLanes installs full, before the first Read. From then on Read does not return a
	// delivery whose Lane makes full return true: it returns one of another lane, or
	// blocks until LaneFreed is called (or ctx ends). Deliveries held back stay in broker
	// order. full is safe for concurrent use and must not call back into the source.
	LimitLanes(full func(lane string) bool)
	// LaneFreed tells a blocked Read that a lane dropped below its limit. It never blocks.
	LaneFreed()
}
