// Package rocketmq is the RocketMQ adapter (github.com/apache/rocketmq-client-go/v2): a
// clustering push consumer whose callbacks are bridged to the pull-based adapters.Source.
//
// # Starting
//
// New fails only on a configuration error, and contacts nothing; Run starts the consumer
// and the dead-letter producer (the lifecycle of package adapters). The client's Start fails at once when it finds no
// route for the topic, whether no name server answers or one answers without a route, so
// the adapter asks the name servers for the route itself (probe.go) and starts the consumer
// only once one answers with it; until then Ready reports which it is ("rocketmq: name
// server 127.0.0.1:9876 unreachable: ..." or "rocketmq: topic "t" does not exist: name
// server ... answers but has no route for it ...", errors.Is ErrNameServerUnreachable or
// ErrTopicNotExist), and Run retries, 1 s doubling to 30 s, until the consumer
// starts, Close or the end of Run's context. Both are retried: a topic may be created later. Probing first also keeps
// failed attempts from piling up the client's statistics goroutines (see the client
// limitations below). A broker that is down while the name server still routes the topic
// does not hold the start back: the client retries its pulls and Ready reports the broker.
// Close during the retries stops them (waiting, bounded by its context, for an attempt in
// progress, which bails out on seeing Close) and leaves no goroutine behind.
//
// # Bridge
//
// The client calls a consume callback with a batch of messages (the adapter sets the batch
// size to 1, see below) and expects a verdict when the callback returns. The callback hands
// each message to Read as a Delivery and blocks until every delivery of the batch is settled
// (or the source closes), then returns: CONSUME_SUCCESS only when all were settled with nil.
// At most max-inflight callbacks run at once (the client's consume goroutines), which is
// the adapter's backpressure: a slow gate slows pulling.
//
// Concurrent mode (mode: concurrent, Lane ""): a delivery settled with an error makes the
// callback return RECONSUME_LATER, and the client sends the message back to the group's
// %RETRY% topic; the broker redelivers it after delay level 3 + reconsume times, with
// DeliveryCount = reconsume times. The batch size is 1 because the v2 client ignores
// ConsumeConcurrentlyContext.AckIndex: RECONSUME_LATER re-sends the whole batch, which would
// re-send messages the gate already completed. The group's %RETRY% topic is created by the
// broker on the first send-back, and a running client learns its route only on its 30 s
// route refresh, so the very first retry of a new group can take up to about a minute.
//
// Orderly mode (mode: orderly, Lane "<topic>/<broker>/<queue id>"): the client locks each
// message queue and calls the callback for one queue at a time, in queue order. A delivery
// settled with an error returns SUSPEND_CURRENT_QUEUE_A_MOMENT with the context's suspend
// time set to suspend_time (the client's default is -1 ms: an immediate, CPU-burning retry
// loop); the same message is handed out again after the pause, DeliveryCount counting up.
// The batch size is 1 here too: the client acknowledges an orderly batch as a whole, so a
// larger batch would redeliver completed messages after a not-done one. Consequently a queue
// has at most one unsettled delivery at a time; parallelism comes from the queues.
//
// # Retries and max_attempts
//
// The ack gate owns retries and dead-lettering (it retries in-process and dead-letters
// after delivery.max_attempts). The broker must therefore never dead-letter behind the
// gate's back: the client's MaxReconsumeTimes is set to 2^30 ("never"; the client's -1
// would mean 16 in concurrent mode), so a message that the gate keeps settling as not done
// (shutdowns, fencing) keeps coming back instead of silently landing in %DLQ%<group>.
//
// # Dead letters
//
// dead_letter_mode "topic" with delivery.dead_letter.target set: DeadLetter publishes the
// payload to the target through a synchronous producer, with the user properties, KEYS,
// TAGS and UNIQ_KEY of the original and adapters.FailureHeaders (plus
// mqsidecar-dlq-group and mqsidecar-dlq-broker) as properties, and returns nil only for
// SEND_OK. Properties with empty values are omitted (RocketMQ cannot carry them).
//
// dead_letter_mode "broker": the dead-letter write and the acknowledgement are one broker
// operation, the consumer send-back with delay level -1, which stores the message in the
// group's %DLQ% topic and only then lets the client advance past it. DeadLetter therefore
// does no I/O: it marks the delivery and returns nil, and the gate's Settle(nil) that
// follows makes the callback return that verdict (concurrent: RECONSUME_LATER with
// DelayLevelWhenNextConsume = -1; orderly: SUSPEND with the message's reconsume times
// beyond MaxReconsumeTimes, which the client sends back with delay level -1). If the
// send-back fails, the client keeps the message and calls the callback again; the adapter
// recognises the marked message (by broker, topic, queue and offset, for 10 minutes) and
// answers with the same verdict without handing it out again. The remaining gap: if the
// process dies after the gate recorded the ID as done but before the send-back reached the
// broker, the redelivered message is a recorded duplicate for the gate and is acknowledged
// without a %DLQ% copy. Use "topic" mode where every dead letter must be confirmed before
// the ID is recorded.
//
// # Message ID
//
// message_id "uniq_key" (default): the UNIQ_KEY property the producer client generates (or
// the producer set), which survives retries and the %RETRY% round trip. "keys": the first
// of the message's KEYS. "property:<name>": that user property. When the chosen field is
// absent the ID falls back, in this order, to UNIQ_KEY, to ORIGIN_MESSAGE_ID (set by the
// broker on retry copies), and to the broker's offset message ID of the stored message
// (broker address + commit log offset), which dedups redeliveries of that stored message
// but not producer duplicates.
//
// # Publishing
//
// Publisher (NewPublisher) is the producer side behind the publish endpoint
// (adapters.Publisher): a synchronous producer of its own (group
// source.rocketmq.publish_group, default "<group>-mqsidecar-publish"; the source's name
// servers, namespace and credentials). A message carries OutMessage.ID as its UNIQ_KEY
// property, which is what the consumer side reads with its default message_id uniq_key
// (with message_id keys or property:<name> the consumer would not find the publisher's ID:
// keep uniq_key where the publish endpoint produces), the key as KEYS, the content type as
// the content-type property and the headers as user properties (a header named like a
// RocketMQ system property, or containing \x01 or \x02, is refused; empty values are left
// out: RocketMQ cannot carry them). What the answer means:
//
//   - nil (2xx): the broker answered SEND_OK: the message is in the commit log, and with
//     flushDiskType SYNC_FLUSH flushed to disk, with brokerRole SYNC_MASTER replicated to a
//     slave, before the answer. With ASYNC_FLUSH and ASYNC_MASTER (RocketMQ's defaults)
//     SEND_OK means written to the page cache: a machine crash can lose it; the durability
//     checks (`mqsidecar doctor`) report such brokers.
//   - ErrOutcomeUnknown: FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT, SLAVE_NOT_AVAILABLE (the
//     Go client returns these without an error: the message is stored, the configured
//     durability was not confirmed; the status is named in the error), or no answer before
//     the request ended (the client fails a sent request only by its timeout).
//   - ErrUnknownTopic: the name servers have no route for the topic while brokers are
//     registered, or the broker answers TOPIC_NOT_EXIST. The publisher never creates a
//     topic: it asks the name servers itself, and its CreateTopicKey names no topic, so
//     neither the client (which would borrow TBW102's route) nor a broker with
//     autoCreateTopicEnable creates one on a send. A topic the name servers routed before
//     and route no more, or any topic while no broker is registered, is ErrUnavailable (a
//     broker restarting unregisters it).
//   - ErrUnavailable: nothing was sent (producer not started, name servers or broker
//     unreachable, a failed write, SYSTEM_BUSY or SERVICE_NOT_AVAILABLE); ErrRejected: the
//     broker refused the message (e.g. too large, no permission), or it cannot be carried.
//
// Retries: the client's own retries are off (retry 0). A retry after a timeout would
// hide that the first attempt may be stored, turning ErrOutcomeUnknown into a success or
// into ErrUnavailable; the caller retries instead, with the same ID, and every copy carries
// the same UNIQ_KEY (the client sets UNIQ_KEY only when the message has none), so the
// consumer side removes copies by it.
//
// # Shutdown
//
// Close: Read returns ErrClosed at once and nothing more is handed out. Deliveries not
// settled by then are settled with ErrNotDone by the adapter (a later Settle from the gate
// is ignored). In concurrent mode their callbacks return RECONSUME_LATER while the client
// still runs, so they are sent back to the retry topic and the queue offsets can advance
// past the completed ones; messages never handed out, and orderly queues, are held until
// after the consumer's Shutdown (which marks the process queues dropped and persists the
// offsets of what completed), so the client discards their verdict and they are redelivered
// from the queue. The client's Shutdown does not wait for running callbacks; Close does,
// bounded by its context. The client records a callback's verdict (the offset) just after
// the callback returns, and Shutdown persists offsets once; the client offers no way to
// observe that step, so Close waits between the last callback and Shutdown: 250 ms, or, when
// a callback returned RECONSUME_LATER within the last 3 s (the client's send-back timeout),
// until 3 s after it. A verdict recorded later is lost: a redelivery, never a loss. Close
// then hands every queue over (see Fleets): each queue's offset saved and confirmed by the
// broker, then its reservation marked saved and released, before the consumer's Shutdown.
//
// # Fleets
//
// Several sidecars in one consumer group share the topic's queues; the client rebalances
// them whenever a member joins or leaves. Three things make that safe.
//
// Offsets in a fleet (a workaround for the client). The client's offset store
// (consumer/offset_store.go, remoteBrokerOffsetStore.persist) deletes from memory the offset
// of every queue not in the list it is given, and the rebalance calls it with only the
// queue being dropped (consumer.go, defaultConsumer.removeUnnecessaryMessageQueue): every
// other queue's offset is forgotten, and a queue that gets no further message is never
// persisted again, not even at Shutdown. The adapter wraps the allocation strategy (the
// client's default, AllocateByAveragely, unchanged) to see revocations and persists every
// queue's offset just before the client drops one. An offset the client records after that
// persist and before the deletion is lost the same way (the client records a callback's
// verdict just after it returns): while a rebalance revokes queues, the verdicts of the
// queues kept stay in their callbacks until the client reports (in its log) that it removed
// the revoked ones, at most 1 s, and the persist comes last, verdictGrace after the last
// verdict went back. Before, a queue kept whose last messages completed in that window (the
// group's retry queue after a burst of retry copies) kept an older saved offset, and a fleet
// stopped cleanly left completed messages to the next sidecar. Second, every pull request
// carries the client's offset of its queue and the broker saves it (PullMessageRequestHeader
// commitOffset, sysFlag FLAG_COMMIT_OFFSET), so a new owner that read a queue's offset a
// moment before the previous owner's last persist arrived writes the stale offset back
// with each pull. Hence the handover, kept in the reservation (below) as two marks: the
// previous owner saves the revoked queue's offset with a confirmed (synchronous) request and
// marks the queue saved, in its rebalance; it marks it released once no delivery of the
// queue is pending any more (pushes on the wire finished, at most 30 s). The new owner's
// rebalance waits for the saved mark before the client reads the offset, at most 1 s
// (handoverWait: the allocation being applied ages meanwhile), and only when the group has
// other members; the messages it inherits (below the reservation) wait for the released
// mark, at most 3 s after it took the queue (inheritHold), so the two owners do not push one
// message at once. A queue's first reservation clears the marks it inherited, so the
// next owner waits for this one's; the group's retry queue is never reserved, so its new owner
// clears them itself once it took the queue (claimRetry). An owner killed with -9 marks nothing: its queues start from its last
// periodic persist (every 5 s) after those waits. Close hands every queue over the same way
// before the consumer's Shutdown.
//
// Fencing. When a queue is revoked, the Fenced channel of every delivery handed out from it
// is closed at once: the ack gate starts no new push of them and lets pushes on the wire
// finish; DeadLetter of a fenced delivery returns an error wrapping
// adapters.ErrStaleDelivery. A "not done" verdict of such a delivery waits until the client
// has dropped the queue (its report that it removed the queue, at most 1 s after the
// strategy returned), so the client discards it instead of sending a retry copy beside the
// message the next owner reads. So does the verdict of a message of the revoked queue whose
// callback starts while the strategy still runs (it is not handed out): its retry copy,
// pushed by the retry queue's owner, would reach the app beside the original the next owner
// reads unflagged, as nothing of this owner reserved it.
//
// Reservations: never silent, even without a shared store. A consumer offset is one number
// per queue; RocketMQ 5.3 offers no metadata beside it (Kafka's commit metadata has no
// counterpart), and the reconsume count is per stored message, set by the broker only on a
// send-back, so it cannot mark a range of a queue. What the broker does keep per queue is
// any group's offset: the adapter keeps how far it may have pushed in the consumer offsets
// of a second group, <group>-mqsidecar-hwm ("the reservation", UPDATE_CONSUMER_OFFSET with
// a confirmed request; a broker that auto-creates subscription groups, the default, creates
// it on a heartbeat the adapter sends once; otherwise create it like the consumer group).
// Before a message of the subscribed topic is handed out, the reservation of its queue lies
// above its offset, raised 64 at a time (one request per 64 messages); bits 61 and 62 are
// the handover marks. A new owner reads the reservation at its first message of the queue
// and flags every message below it redelivered (ce-redelivered: true), so a message the
// previous owner may have pushed, completed or not, never reaches the app unflagged, also
// after a kill -9 between two offset commits. With a shared dedup store the gate recognises
// completed ones and does not push them at all.
//
// What is and is not flagged: flagged are all messages below the previous owners'
// reservation, including up to 64 per handover that were never pushed (the reservation runs
// ahead); retry-topic copies are flagged by their reconsume count. Not flagged, so a replay
// of a completed message can reach the app unflagged with the embedded store alone: when
// the broker refuses the reservation group or the ACL does not allow it (logged as an error
// once, reservations and handover marks are then off); when the broker loses consumer
// offsets (it flushes them to disk every 5 s, flushConsumerOffsetInterval, so a broker
// crash can take back a reservation together with the offsets). Two members can hand out one
// queue at the same time, because each rebalances from its own view of the group: a member
// that takes over a queue whose reservation was not released raises the reservation at once
// and flags (and holds back, like the inherited part) its whole first window, and an owner
// reads the reservation again every 250 ms while it hands out messages and flags everything
// of the queue once another member's reservation shows there; each reservation carries a
// per-process offset (1-63) so that two members raising it from the same point write
// different values. What the earlier owner handed out unflagged before it noticed reaches
// the app before the taker's flagged copies, which wait for the release or 3 s. Orderly
// mode uses the same reservations.
//
// # Client state that is global to the process
//
// The client keys its instances by InstanceName: two consumers with one name share a client
// and cannot both register a group, so every Source gets a unique instance name unless
// source.rocketmq.instance_name sets a stable one (one Source per process). Its logger
// (rlog) is global too: the adapter installs one bridge to log/slog per process, which logs
// through the logger of the most recently created Source. Client info lines are logged at
// debug (they are internal state); warnings and errors keep their level; message bodies in
// log fields are never logged. Ready reports a pull failure seen in the client's log within
// the last readyErrorWindow, which is process-wide as well.
//
// Known client limitations (apache/rocketmq-client-go): every consumer start creates
// statistics goroutines that sleep until the next minute/hour/day boundary before they
// notice Shutdown (issue #1147), so each restart of a Source leaves up to 10 sleeping
// goroutines that exit by themselves; other client goroutines exit within ~10 s of Close.
// A pull result that arrives exactly while Shutdown closes a process queue can panic the
// client (issue #1051); Close pauses pulling first to make that window small. The race
// detector reports data races inside the client: rmqClient.Shutdown writes an unsynchronised
// flag that in-flight requests read (Close and kill pause the consumer and wait before
// Shutdown, which keeps this out of the tests in practice), the expiry sweep reads the
// process queue's tree map without its lock, and the orderly consumer polls the same map
// without the lock on every run (orderly e2e tests are therefore skipped under -race).
package rocketmq
