package publish

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Records is what the endpoint needs of the sidecar's store to remember idempotency keys
// (*dedup.Store and *redisstore.Store implement it, in their own key space beside the
// message IDs). SwapRecord reads the record of key (nil when there is none or it expired),
// calls f with it, and writes f's next when write is true (nil deletes the record), all
// as one atomic step: no other SwapRecord of key interleaves. f may be called more than
// once; it must be cheap and must not call the store. SwapRecord returns once the write is
// durable (the store's own rule for message IDs), or an error and nothing written. A
// record lives the store's TTL (dedup.ttl) after its last write.
type Records interface {
	SwapRecord(ctx context.Context, key string, f func(old []byte) (next []byte, write bool)) error
}

// MaxKeyLen is the longest idempotency key (and message ID) accepted.
const MaxKeyLen = 256

// record is the stored state of one idempotency key.
type record struct {
	// Done: the broker confirmed; Receipt is the answer. Otherwise a publish is in flight
	// until Until (its lease: a sidecar killed mid-publish leaves the key to a retry after
	// it), claimed by Token.
	Done    bool              `json:"done,omitempty"`
	Hash    string            `json:"hash"`
	Until   int64             `json:"until,omitempty"` // unix ms
	Token   string            `json:"token,omitempty"`
	Receipt *adapters.Receipt `json:"receipt,omitempty"`
}

// requestHash identifies what a key was used for: the destination and the payload.
func requestHash(m *adapters.OutMessage) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s%d:%s", len(m.Topic), m.Topic, len(m.RoutingKey), m.RoutingKey)
	h.Write(m.Payload)
	return hex.EncodeToString(h.Sum(nil))
}

// claim is the answer of a claim: either the key is now ours to publish (token), or the
// request is answered from the record (replay, or err).
type claim struct {
	token  string
	replay *adapters.Receipt
}

// claim takes key for one publish of hash, with a lease of the publish timeout plus a
// margin. It answers ErrInFlight while another publish of key holds its lease,
// ErrKeyReused when key was used for something else, the remembered receipt when key was
// confirmed, and ErrStore when the store failed.
func (s *Server) claim(ctx context.Context, key, hash string) (claim, error) {
	token := newID()
	now := s.opts.Now()
	var c claim
	var refused error
	err := s.opts.Records.SwapRecord(ctx, key, func(old []byte) ([]byte, bool) {
		c, refused = claim{}, nil
		var r record
		if old != nil && json.Unmarshal(old, &r) == nil {
			switch {
			case r.Hash != hash:
				refused = ErrKeyReused
				return nil, false
			case r.Done && r.Receipt != nil:
				c.replay = r.Receipt
				return nil, false
			case !r.Done && r.Until > now.UnixMilli():
				refused = ErrInFlight
				return nil, false
			}
			// An in-flight record past its lease: the sidecar that claimed it died or
			// gave up without releasing; this request sends again with the same ID.
		}
		c.token = token
		next, _ := json.Marshal(record{Hash: hash, Until: now.Add(s.opts.Settings.Timeout + leaseMargin).UnixMilli(), Token: token})
		return next, true
	})
	if err != nil {
		return claim{}, fmt.Errorf("%w: %v", ErrStore, err)
	}
	return c, refused
}

// leaseMargin is added to publish.timeout for an in-flight key's lease: the answer to the
// first request may still be on its way when its timeout ends.
const leaseMargin = 5 * time.Second

// confirm remembers rc as the answer of key.
func (s *Server) confirm(ctx context.Context, key, hash string, rc adapters.Receipt) error {
	next, err := json.Marshal(record{Done: true, Hash: hash, Receipt: &rc})
	if err != nil {
		return err
	}
	return s.opts.Records.SwapRecord(ctx, key, func([]byte) ([]byte, bool) { return next, true })
}

// release gives key up after a failed publish, so that a retry sends again at once; a
// record that is no longer this claim's is left alone.
func (s *Server) release(ctx context.Context, key, token string) error {
	return s.opts.Records.SwapRecord(ctx, key, func(old []byte) ([]byte, bool) {
		var r record
		if old == nil || json.Unmarshal(old, &r) != nil || r.Done || r.Token != token {
			return nil, false
		}
		return nil, true
	})
}

// newID returns a random UUID (version 4), the ID of a message published without a key.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
