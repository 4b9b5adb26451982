package rocketmq

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/rocketmq-client-go/v2/rlog"
)

// The client's logger is a process global (rlog.SetLogger writes it without
// synchronisation), so it is installed once; later Sources only swap the slog.Logger the
// bridge writes to.
var (
	bridgeOnce   sync.Once
	bridgeLogger atomic.Pointer[slog.Logger]

	pullErrMu   sync.Mutex
	pullErrAt   time.Time
	pullErrText string
)

// installLogBridge routes the client's logs to l (see the package doc).
func installLogBridge(l *slog.Logger) {
	bridgeLogger.Store(l.With("component", "rocketmq-client"))
	bridgeOnce.Do(func() { rlog.SetLogger(logBridge{}) })
}

// lastPullError returns when the client last logged a failed pull, and what it said.
func lastPullError() (time.Time, string) {
	pullErrMu.Lock()
	defer pullErrMu.Unlock()
	return pullErrAt, pullErrText
}

// pullFailures are the client's log lines that mean "cannot fetch from the broker".
var pullFailures = map[string]bool{
	"pull message from broker error": true,
	"pull broker timeout":            true,
	"no broker found for mq":         true,
}

// quietWarnings are client warnings that the adapter causes on purpose or that repeat per
// message; they are logged at debug so info/warn logs stay one line per state change.
var quietWarnings = map[string]bool{
	// A callback blocks while the gate works on the message; the gate owns timeouts.
	"consumeMessageCurrently time out": true,
	// Every orderly "not done" and every broker-mode dead letter in orderly mode.
	"consumeMessage Orderly return not OK": true,
	// Close discards verdicts of held callbacks on purpose.
	"processQueue is dropped without process consume result.":          true,
	"the message queue not be able to consume, because it was dropped": true,
	"the message queue not be able to consume, because it's dropped.":  true,
}

// retryTopicNoise reports the client's warnings about a group's %RETRY% topic that does not
// exist yet: the broker creates it on the first retry, so until then every route refresh
// and rebalance warns about a normal condition.
func retryTopicNoise(msg string, fields map[string]interface{}) bool {
	if msg == "query topic route from server error" {
		// Its companion line names the topic and keeps its level for other topics.
		return fmt.Sprint(fields[rlog.LogKeyUnderlayError]) == "topic not exist"
	}
	topic, _ := fields[rlog.LogKeyTopic].(string)
	return strings.HasPrefix(topic, "%RETRY%")
}

// logBridge implements rlog.Logger on top of the current bridge logger.
type logBridge struct{}

func (logBridge) Debug(msg string, fields map[string]interface{}) {
	logTo(slog.LevelDebug, msg, fields)
}

// Info lines of the client are internal state (rebalances, route updates, shutdown
// steps): debug for us.
func (logBridge) Info(msg string, fields map[string]interface{}) {
	if msg == queueRemovedLog {
		group, _ := fields[rlog.LogKeyConsumerGroup].(string)
		mq, _ := fields[rlog.LogKeyMessageQueue].(string)
		clientRemovedQueue(group, mq)
	}
	logTo(slog.LevelDebug, msg, fields)
}

// queueRemovedLog is the client's info line right after a rebalance removed a revoked queue
// (consumer.go, updateProcessQueueTable), which ends a verdict hold (fleet.go).
const queueRemovedLog = "remove unnecessary mq when updateProcessQueueTable"

func (logBridge) Warning(msg string, fields map[string]interface{}) {
	if pullFailures[msg] {
		pullErrMu.Lock()
		pullErrAt = time.Now()
		pullErrText = msg
		if e, ok := fields[rlog.LogKeyUnderlayError]; ok {
			pullErrText = fmt.Sprintf("%s: %v", msg, e)
		}
		pullErrMu.Unlock()
	}
	level := slog.LevelWarn
	if quietWarnings[msg] || retryTopicNoise(msg, fields) {
		level = slog.LevelDebug
	}
	logTo(level, msg, fields)
}

func (logBridge) Error(msg string, fields map[string]interface{}) {
	logTo(slog.LevelError, msg, fields)
}

// Fatal is logged as an error: the client calls it for conditions it survives, and the
// sidecar must not exit from inside a library.
func (logBridge) Fatal(msg string, fields map[string]interface{}) {
	logTo(slog.LevelError, msg, fields)
}

// Level and OutputPath are configured through slog instead.
func (logBridge) Level(string)            {}
func (logBridge) OutputPath(string) error { return nil }

func logTo(level slog.Level, msg string, fields map[string]interface{}) {
	l := bridgeLogger.Load()
	if l == nil || !l.Enabled(context.Background(), level) {
		return
	}
	l.LogAttrs(context.Background(), level, msg, fieldAttrs(fields)...)
}

// fieldAttrs converts client log fields to attributes in a stable order. Fields that carry
// messages are reduced to a count: bodies may hold personal data and must not reach logs.
func fieldAttrs(fields map[string]interface{}) []slog.Attr {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		v := fields[k]
		switch k {
		case rlog.LogKeyMessages, "message", "msgs", "msg":
			attrs = append(attrs, slog.Int(k+"_count", count(v)))
			continue
		}
		if err, ok := v.(error); ok {
			attrs = append(attrs, slog.String(k, err.Error()))
			continue
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	return attrs
}

// count is the number of elements of a slice or array value, 1 for anything else non-nil.
func count(v interface{}) int {
	if v == nil {
		return 0
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		return rv.Len()
	default:
		return 1
	}
}
