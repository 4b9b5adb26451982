// Package rabbitmq is the RabbitMQ source adapter (AMQP 0-9-1, github.com/rabbitmq/amqp091-go).
// It implements adapters.Source: it consumes one queue with manual acknowledgements and
// translates the ack gate's decisions into basic.ack / basic.nack.
//
// # Acknowledgements
//
//   - Settle(nil) → basic.ack, on the channel that delivered the message, and nowhere else.
//   - Settle(err) → basic.nack(requeue=true): the message goes back to its queue at once and
//     is redelivered (Redelivered set; x-delivery-count counted on quorum queues). Leaving
//     it unacknowledged instead would pin a prefetch slot until the channel closes. The ack
//     gate uses not-done for shutdown and for retries it wants the broker to perform, so it
//     is the gate's job not to spin on it.
//   - Settle never blocks on the network: it queues the decision for a per-channel writer
//     goroutine. Close flushes that queue before closing the channel, so every decision made
//     before Close reaches the broker (the broker handles frames of one channel in order).
//   - Every channel is a generation. A delivery remembers its channel; when that channel or
//     its connection is gone, the broker has already requeued the message, and a later Settle
//     is dropped (counted as EventStaleSettle). Delivery tags are never carried over to a new
//     channel, so a delivery is never acknowledged twice or on the wrong channel.
//   - A delivery settled after Close returned is dropped the same way.
//
// # Order and lanes
//
// RabbitMQ hands out up to prefetch (basic.qos) unacknowledged messages per consumer and,
// with more than one in flight, promises no processing order, so Lane is "" and the ack gate
// may work concurrently. With prefetch 1 the broker only sends the next message after the
// previous one was settled, so Lane is the source ("rabbitmq://<vhost>/<queue>") and the
// gate keeps queue order. Requeued messages (not-done, connection loss) may come back later
// than messages behind them; strict order also needs a single active consumer.
//
// # Memory (G4)
//
// The adapter buffers nothing of its own: it hands one delivery at a time to Read (an
// unbuffered channel), and the ack gate bounds the bytes it admits (half of
// delivery.max_buffer_bytes). The broker's prefetch window is counted in messages, and it
// stays so: RabbitMQ does not implement basic.qos's prefetch-size, so up to prefetch ×
// message size may sit in amqp091's buffers (the socket and the consumer's queue) on top
// of the budget. The prefetch is not lowered automatically when large messages arrive: by
// the time one is seen, the window of them is already on its way (the burst is what
// exhausts memory), and a prefetch moved to 1 would change the order contract (Lane) in
// the middle of a stream. Size it yourself: prefetch × largest message within what the
// pod's memory limit leaves beside the budget (docs/guarantees.md, G4).
//
// # Message ID
//
// message_id: "message_id" (default) uses the AMQP message-id property; "header:<name>"
// uses a header. When it is absent or empty, the delivery gets a random, unique ID
// ("rabbitmq-generated:<hex>"), a warning is logged at most once per minute and
// EventMissingID is counted. A content hash was rejected on purpose: two legitimately
// identical messages ("add 1 item") would be merged and the second one silently acked, which
// breaks the no-loss guarantee. The price of a generated ID is that redeliveries of such a
// message are not recognised by dedup; they are still flagged ce-redelivered through the
// broker's redelivered flag. Producers should set message_id.
//
// # Delivery fields
//
//   - ID: see above. Payload: the body. ContentType: the content-type property.
//   - Source: "rabbitmq://<vhost>/<queue>" with the vhost path-escaped (the default vhost
//     "/" becomes "%2F", as in AMQP URIs). Time: the timestamp property when set.
//   - Redelivered: the broker's redelivered flag, or a positive x-delivery-count.
//   - DeliveryCount: the x-delivery-count header (quorum queues), else 0.
//   - Headers: the application headers (amqp.Table) sorted by name, values stringified
//     (numbers in decimal, booleans "true"/"false", timestamps RFC 3339, byte arrays as text
//     when valid UTF-8 else base64, nested tables and arrays as JSON), followed by the
//     standard properties that are set, as amqp-correlation-id, amqp-reply-to, amqp-type,
//     amqp-app-id, amqp-user-id, amqp-message-id, amqp-content-encoding, amqp-priority,
//     amqp-expiration, and the routing as amqp-exchange and amqp-routing-key.
//   - Key, Partition, Offset: unused (HasCoordinates false).
//
// # Dead letters
//
// dead_letter_mode "publish" (default): DeadLetter publishes a persistent copy to the target
// "exchange[/routing-key]" ("/key" means the default exchange; without "/" the routing key
// is the queue name), mandatory, on a dedicated connection in confirm mode, and returns nil
// only after the broker confirmed it; a nack, a return (unroutable), a closed channel or a
// timeout is an error and nothing is acknowledged. The copy keeps the body, the application
// headers and the properties (except expiration, which could expire the copy, and user_id,
// which RabbitMQ checks against the publishing user), plus adapters.FailureHeaders and
// mqsidecar-dlq-queue, mqsidecar-dlq-exchange, mqsidecar-dlq-routing-key. The ack gate then
// settles the original with nil. If the channel dies between the confirm and that ack, the
// original is redelivered and may be dead-lettered twice; consumers of the dead-letter queue
// can dedup by mqsidecar-dlq-id.
//
// dead_letter_mode "nack": DeadLetter rejects the delivery (basic.nack, requeue=false) on its
// own channel, so the queue's dead-letter exchange (x-dead-letter-exchange argument or
// policy) receives it with RabbitMQ's x-death header; failure details cannot be attached. A
// synchronous round trip on the same channel (basic.qos) proves the broker processed the
// nack before DeadLetter returns nil. The later Settle(nil) is a no-op. In this mode
// dead-lettering is always enabled and the target string is ignored. Beware: a queue without
// a dead-letter exchange discards rejected messages.
//
// A dead letter is refused with ErrStaleDelivery when the delivery's channel is already gone
// (the message was requeued and will come back), so no copy is written for a message that
// can no longer be acknowledged.
//
// # Queue
//
// By default the queue is only checked (passive declare on a throwaway channel) and a
// missing queue is a clear error in Ready and the log; the source keeps retrying, so
// creating the queue later is enough. With declare: true a missing queue is declared
// durable (an existing one is used as it is, whatever its type or arguments).
//
// # Connection recovery
//
// Run's goroutine owns the connection: it dials (with the URL's credentials, TLS when the
// scheme is amqps), opens a channel, sets basic.qos, checks the queue and consumes. When the
// connection or channel closes, or the broker cancels the consumer (queue deleted, node
// failover), it logs once, reports the cause through Ready, and re-dials with exponential
// backoff (with jitter, capped). Read keeps blocking meanwhile. amqp091's own automatic
// recovery is not used, so that a delivery tag can never outlive its channel. Close and
// cancel notification channels are buffered and drained by a watcher goroutine per
// connection, so the library never blocks on them.
//
// The URL is a secret: it is never logged and never part of an error; logs name the host,
// port, vhost and user only. New refuses a URL whose user info is ambiguous (a "#", "?"
// or "/" before the last "@", several "@": UserinfoProblem, in Settings.Check), since net/url would
// take the host, port or vhost out of the password — dialling the wrong host and logging
// the password as an address.
//
// # Publishing
//
// Publisher (NewPublisher) is the producer side behind the publish endpoint
// (adapters.Publisher). It dials like the source (same URL, TLS, backoff) on a connection
// of its own, and opens up to source.rabbitmq.publish_channels channels in confirm mode,
// each carrying one publish at a time. A message is published persistent (delivery mode
// 2), mandatory, with message_id = OutMessage.ID (the consumer side's default ID source),
// the content type, the headers as an AMQP table (string values; a later header of one name
// replaces an earlier one) and a timestamp, to the exchange OutMessage.Topic ("" = the
// default exchange) with OutMessage.RoutingKey. What the answer means:
//
//   - nil (2xx): the broker acked the publish (confirm, matched by delivery tag) and
//     returned nothing: at least one queue took the message, and for a durable queue the
//     ack comes after the message was written to disk (quorum queues: after a majority).
//     A persistent message in a non-durable queue is not durable; the durability checks
//     (`mqsidecar doctor`) report such queues.
//   - ErrUnroutable: basic.return (no queue is bound for the routing key). The broker acks a
//     returned message too; the return arrives first, and one publish per channel makes it
//     attributable, so a returned message is never a success.
//   - ErrUnknownTopic: the exchange does not exist (the broker closes the channel with 404;
//     the next publish opens a new channel). ErrRejected: a nack, or a channel exception
//     refusing the message (access refused, precondition failed, too large), or a field AMQP
//     cannot carry (a message ID, exchange, routing key, content type or header name over
//     255 bytes; refused before sending).
//   - ErrUnavailable: nothing was sent: no connection (Publish does not wait for one; Run
//     reconnects with backoff), the broker blocks publishing (connection.blocked, a memory
//     or disk alarm: answered at once instead of waiting for a confirm that cannot come),
//     every channel busy or a new channel not opened before the request ended, or the
//     request ended before sending.
//   - ErrOutcomeUnknown: the message left but no confirm came (the connection was lost, or
//     the request ended first). The channel is then dropped, so that a late confirm or return
//     cannot be taken for another publish. A retry with the same ID may store a second copy,
//     which the consumer side removes by message_id.
//
// # Lifecycle
//
// New validates the configuration; it never blocks on the network and starts no goroutine.
// Run connects and keeps the connection (above) until Close, or until its context ends,
// which closes the source (package adapters). Close cancels the consumer, flushes queued acknowledgements (bounded by
// its ctx), closes channel and connections; unsettled deliveries return to the queue. Close
// is idempotent (later calls return adapters.ErrClosed), ends Run and leaves no goroutine
// behind.
package rabbitmq
