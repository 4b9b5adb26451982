package publish

import (
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// The request headers the endpoint reads itself.
const (
	// HeaderIdempotencyKey is the message ID and the idempotency key (IETF
	// draft-ietf-httpapi-idempotency-key-header); ce-id is the alternative.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderRoutingKey is the RabbitMQ routing key, when the path does not give one.
	HeaderRoutingKey = "Mqsidecar-Routing-Key"
	// HeaderMessageID answers the message ID (also in the receipt).
	HeaderMessageID = "Mqsidecar-Message-Id"
	// HeaderReplayed is "true" on an answer that repeats the receipt of an earlier request
	// with the same key, without sending again.
	HeaderReplayed = "Idempotent-Replayed"
)

// dropped are request headers that are never message headers: hop-by-hop and framing
// headers, the request's negotiation and credentials, and those the endpoint reads itself
// (the consumer side likewise never forwards hop-by-hop or framing headers).
var dropped = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true, "Expect": true, "Content-Type": true,
	"Authorization": true, "Cookie": true, "Accept": true, "Accept-Encoding": true, "User-Agent": true,
	HeaderIdempotencyKey: true, HeaderRoutingKey: true,
	// ce-id is the message ID, written by the publisher where the consumer reads it;
	// ce-partitionkey is the ordering key (OutMessage.Key).
	"Ce-Id": true, "Ce-Partitionkey": true,
}

// messageHeaders maps the request's headers to message headers, the way the consumer
// side maps them back (docs/guarantees.md, "The HTTP push"): ce-* as CloudEvents
// attributes in binary mode, traceparent and tracestate as they are, every other header
// as it is; names in lower case, one message header per value, in the request's order of
// names (sorted, as net/http keeps no order).
func messageHeaders(h http.Header) []adapters.Header {
	kept := 0
	for name := range h {
		if !dropped[name] {
			kept++
		}
	}
	if kept == 0 { // the common request: framing and negotiation only
		return nil
	}
	var out []adapters.Header
	for _, name := range slices.Sorted(maps.Keys(h)) {
		if dropped[name] {
			continue
		}
		lower := strings.ToLower(name)
		for _, v := range h[name] {
			out = append(out, adapters.Header{Key: lower, Value: v})
		}
	}
	return out
}

func headerOf(name, value string) adapters.Header {
	return adapters.Header{Key: strings.ToLower(name), Value: value}
}
