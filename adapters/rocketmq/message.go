package rocketmq

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// systemProperties are the property names RocketMQ and its clients use for themselves
// (Java MessageConst of 5.3, plus the Go client's own). They are not user headers: they are
// not forwarded to the app, and not copied to dead letters except the ones deadLetterMessage
// keeps on purpose.
var systemProperties = map[string]bool{}

func init() {
	for _, k := range []string{
		"KEYS", "TAGS", "WAIT", "DELAY", "RETRY_TOPIC", "REAL_TOPIC", "REAL_QID", "TRAN_MSG",
		"PGROUP", "MIN_OFFSET", "MAX_OFFSET", "BUYER_ID", "ORIGIN_MESSAGE_ID", "TRANSFER_FLAG",
		"CORRECTION_FLAG", "MQ2_FLAG", "RECONSUME_TIME", "MSG_REGION", "TRACE_ON", "UNIQ_KEY",
		"EXTEND_UNIQ_INFO", "MAX_RECONSUME_TIMES", "CONSUME_START_TIME", "INNER_NUM",
		"INNER_BASE", "DUP_INFO", "CHECK_IMMUNITY_TIME_IN_SECONDS", "TRAN_PREPARED_QUEUE_OFFSET",
		"__transactionId__", "TRANSACTION_CHECK_TIMES", "INSTANCE_ID", "CORRELATION_ID",
		"REPLY_TO_CLIENT", "TTL", "ARRIVE_TIME", "PUSH_REPLY_TIME", "CLUSTER", "MSG_TYPE",
		"POP_CK", "POP_CK_OFFSET", "1ST_POP_TIME", "__SHARDINGKEY", "SHARDING_KEY",
		"PROPERTY_FORWARD_QUEUE_ID", "REDIRECT", "INNER_MULTI_DISPATCH",
		"INNER_MULTI_QUEUE_OFFSET", "TRACE_CONTEXT", "TIMER_DELAY_SEC", "TIMER_DELIVER_MS",
		"__BORNHOST", "BORN_TIMESTAMP", "TIMER_ENQUEUE_MS", "TIMER_DEQUEUE_MS",
		"TIMER_ROLL_TIMES", "TIMER_OUT_MS", "TIMER_DEL_UNIQKEY", "TIMER_DELAY_LEVEL",
		"TIMER_DELAY_MS", "__CRC32#", "DLQ_ORIGIN_TOPIC", "DLQ_ORIGIN_MESSAGE_ID",
		"__STARTDELIVERTIME", "bname",
	} {
		systemProperties[k] = true
	}
}

func isSystemProperty(k string) bool {
	return systemProperties[k] || strings.HasPrefix(k, "__RMQ.TRANSIENT.")
}

// parseMessageID splits message_id into its kind and, for "property:<name>", the name.
func parseMessageID(rule string) (kind, name string, err error) {
	switch {
	case rule == "" || rule == "uniq_key":
		return "uniq_key", "", nil
	case rule == "keys":
		return "keys", "", nil
	case strings.HasPrefix(rule, "property:") && len(rule) > len("property:"):
		return "property", strings.TrimPrefix(rule, "property:"), nil
	default:
		return "", "", fmt.Errorf("message_id: must be uniq_key, keys or property:<name>, got %q", rule)
	}
}

// messageID applies the configured rule with the fallbacks of the package doc.
func messageID(rule string, m *primitive.MessageExt) string {
	kind, name, _ := parseMessageID(rule)
	switch kind {
	case "keys":
		if k := strings.Fields(m.GetKeys()); len(k) > 0 {
			return k[0]
		}
	case "property":
		if v := m.GetProperty(name); v != "" {
			return v
		}
	}
	if v := m.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex); v != "" {
		return v
	}
	if v := m.GetProperty(primitive.PropertyOriginMessageId); v != "" {
		return v
	}
	if m.OffsetMsgId != "" {
		return m.OffsetMsgId
	}
	// Not reachable for messages decoded from a broker; keeps ID non-empty regardless.
	queueID := 0
	if m.Queue != nil {
		queueID = m.Queue.QueueId
	}
	return fmt.Sprintf("%s/%d/%d", m.Topic, queueID, m.QueueOffset)
}

// delivery converts a message; Ack is set by the caller.
func (s *Source) delivery(m *primitive.MessageExt) *adapters.Delivery {
	topic := m.Topic
	if s.cfg.Namespace != "" {
		topic = strings.TrimPrefix(topic, s.cfg.Namespace+"%")
	}
	props := m.GetProperties()
	names := make([]string, 0, len(props))
	for k := range props {
		if !isSystemProperty(k) {
			names = append(names, k)
		}
	}
	// Properties are a map on the wire: sort for a stable order.
	slices.Sort(names)
	headers := make([]adapters.Header, 0, len(names))
	contentType := ""
	for _, k := range names {
		headers = append(headers, adapters.Header{Key: k, Value: props[k]})
		if strings.EqualFold(k, "content-type") {
			contentType = props[k]
		}
	}
	var t time.Time
	switch {
	case m.BornTimestamp > 0:
		t = time.UnixMilli(m.BornTimestamp)
	case m.StoreTimestamp > 0:
		t = time.UnixMilli(m.StoreTimestamp)
	}
	queueID, broker := 0, ""
	if m.Queue != nil {
		queueID, broker = m.Queue.QueueId, m.Queue.BrokerName
	}
	lane := ""
	if s.orderly {
		lane = fmt.Sprintf("%s/%s/%d", topic, broker, queueID)
	}
	return &adapters.Delivery{
		ID:             messageID(s.cfg.MessageID, m),
		Payload:        m.Body,
		Headers:        headers,
		ContentType:    contentType,
		Source:         "rocketmq://" + topic,
		Time:           t,
		Key:            m.GetKeys(),
		Lane:           lane,
		HasCoordinates: true,
		Partition:      int32(queueID),
		Offset:         m.QueueOffset,
		DeliveryCount:  int(m.ReconsumeTimes),
		Redelivered:    m.ReconsumeTimes > 0,
	}
}

// deadLetterMessage builds the copy for the dead-letter topic: payload, user properties,
// KEYS/TAGS/UNIQ_KEY of the original (orig may be nil), and the failure headers.
func (s *Source) deadLetterMessage(d *adapters.Delivery, orig *primitive.MessageExt, f adapters.Failure) *primitive.Message {
	props := make(map[string]string, len(d.Headers)+12)
	set := func(k, v string) {
		k, v = cleanProperty(k), cleanProperty(v)
		if k != "" && v != "" {
			props[k] = v
		}
	}
	for _, h := range d.Headers {
		set(h.Key, h.Value)
	}
	if orig != nil {
		for _, k := range []string{primitive.PropertyKeys, primitive.PropertyTags, primitive.PropertyUniqueClientMessageIdKeyIndex} {
			set(k, orig.GetProperty(k))
		}
	} else {
		set(primitive.PropertyKeys, d.Key)
	}
	for _, h := range adapters.FailureHeaders(d, f) {
		set(h.Key, h.Value)
	}
	set("mqsidecar-dlq-group", s.cfg.Group)
	if orig != nil && orig.Queue != nil {
		set("mqsidecar-dlq-broker", orig.Queue.BrokerName)
	}
	msg := &primitive.Message{Topic: s.dlTarget, Body: d.Payload}
	msg.WithProperties(props)
	return msg
}

// cleanProperty removes the two control characters RocketMQ uses to separate properties on
// the wire (a value containing them would corrupt the message's property map).
func cleanProperty(v string) string {
	if !strings.ContainsAny(v, "\x01\x02") {
		return v
	}
	return strings.Map(func(r rune) rune {
		if r == 1 || r == 2 {
			return ' '
		}
		return r
	}, v)
}
