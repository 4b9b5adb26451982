package publish

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

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

// record is what the store keeps of a confirmed idempotency key: the hash of what it was
// used for and the receipt. Only confirmed keys are stored; a publish in flight is known
// to this process alone (Server.inflight): a sidecar killed mid-publish leaves nothing, so
// the client's retry sends again with the same ID, as after a 504.
type record struct {
	Hash    string            `json:"hash"`
	Receipt *adapters.Receipt `json:"receipt"`
}

// requestHash identifies what a key was used for: the destination and the payload.
func requestHash(m *adapters.OutMessage) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s%d:%s", len(m.Topic), m.Topic, len(m.RoutingKey), m.RoutingKey)
	h.Write(m.Payload)
	return hex.EncodeToString(h.Sum(nil))
}

// claim takes key for one publish of hash in this process. It answers ErrInFlight while
// another request of this process publishes key, ErrKeyReused when key was used for
// something else, the remembered receipt when key was confirmed (the key is then not
// held), and ErrStore when the store failed. A nil receipt and error: the caller holds the
// key and must call confirm or release.
func (s *Server) claim(ctx context.Context, key, hash string) (*adapters.Receipt, error) {
	s.keysMu.Lock()
	if h, ok := s.inflight[key]; ok {
		s.keysMu.Unlock()
		if h != hash {
			return nil, ErrKeyReused
		}
		return nil, ErrInFlight
	}
	s.inflight[key] = hash
	s.keysMu.Unlock()
	var r record
	found := false
	err := s.opts.Records.SwapRecord(ctx, key, func(old []byte) ([]byte, bool) {
		r = record{}
		found = old != nil && json.Unmarshal(old, &r) == nil && r.Receipt != nil
		return nil, false
	})
	switch {
	case err != nil:
		s.release(key)
		return nil, fmt.Errorf("%w: %v", ErrStore, err)
	case found && r.Hash != hash:
		s.release(key)
		return nil, ErrKeyReused
	case found:
		s.release(key)
		return r.Receipt, nil
	}
	return nil, nil
}

// confirm remembers rc as the answer of key, then lets key go.
func (s *Server) confirm(ctx context.Context, key, hash string, rc adapters.Receipt) error {
	defer s.release(key)
	next, err := json.Marshal(record{Hash: hash, Receipt: &rc})
	if err != nil {
		return err
	}
	return s.opts.Records.SwapRecord(ctx, key, func([]byte) ([]byte, bool) { return next, true })
}

// release lets key go after a failed publish, so that a retry sends again at once.
func (s *Server) release(key string) {
	s.keysMu.Lock()
	delete(s.inflight, key)
	s.keysMu.Unlock()
}

// newID returns a random UUID (version 4), the ID of a message published without a key.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var u [36]byte
	hex.Encode(u[0:8], b[0:4])
	u[8] = '-'
	hex.Encode(u[9:13], b[4:6])
	u[13] = '-'
	hex.Encode(u[14:18], b[6:8])
	u[18] = '-'
	hex.Encode(u[19:23], b[8:10])
	u[23] = '-'
	hex.Encode(u[24:], b[10:])
	return string(u[:])
}
