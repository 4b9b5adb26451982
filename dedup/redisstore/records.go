package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// Records (package dedup, records.go: the key space of the publish endpoint's idempotency
// keys): one key per record, <KeyPrefix>rec{<key>}, beside the message IDs' <KeyPrefix>{<id>},
// expiring Options.TTL after its last write. SwapRecord reads the key, calls f, and writes
// its result with the compare-and-set script of the IDs, so a concurrent swap from any
// replica makes it read again and call f again; with WaitReplicas > 0 the write is
// followed by WAIT on its connection, as the writer's batches are. It waits for the
// writer's connection (bounded by ctx), and fails while the store is not ready (Redis
// unreachable or not durable as configured), so nothing is remembered that could be lost.

// recordCAS is a strict compare-and-set: unlike the IDs' casScript it does not take a key
// that already holds the value to write as written, since two swaps may compute the same
// next value from the same old one, and the second must read again. KEYS[1] the key;
// ARGV[1] the value read ("" = none), ARGV[2] the value to write ("" = delete), ARGV[3] the
// TTL in milliseconds. It returns {1} when written, {0, current} otherwise.
const recordCAS = `
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur == ARGV[1] then
	if ARGV[2] == '' then
		redis.call('DEL', KEYS[1])
	else
		redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
	end
	return {1}
end
return {0, cur}
`

// recordRounds bounds the compare-and-set rounds of one SwapRecord under contention.
const recordRounds = 100

// SwapRecord implements the records of package dedup for the shared store.
func (s *Store) SwapRecord(ctx context.Context, key string, f func(old []byte) (next []byte, write bool)) error {
	if key == "" {
		return fmt.Errorf("dedup: redis: empty record key: %w", dedup.ErrInvalid)
	}
	if s.closed.Load() {
		return fmt.Errorf("dedup: redis: record: %w", dedup.ErrClosed)
	}
	select {
	case <-s.up:
	case <-s.stop:
		return fmt.Errorf("dedup: redis: record: %w", dedup.ErrClosed)
	case <-ctx.Done():
		return fmt.Errorf("dedup: redis %s: not connected: %w", s.where(), ctx.Err())
	}
	if err := s.Ready(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*s.opts.Timeout)
	defer cancel()
	k := s.opts.KeyPrefix + "rec{" + key + "}"
	px := strconv.FormatInt(s.opts.TTL.Milliseconds(), 10)
	cl := redis.Cmdable(s.rdb)
	if s.cluster != nil {
		c, err := s.cluster.MasterForKey(ctx, k)
		if err != nil {
			return fmt.Errorf("dedup: redis %s: find the master of a key: %w", s.where(), err)
		}
		cl = c
	}
	cur, err := s.rdb.Get(ctx, k).Result()
	if errors.Is(err, redis.Nil) {
		cur, err = "", nil
	}
	if err != nil {
		return fmt.Errorf("dedup: redis %s: read a record: %w", s.where(), err)
	}
	for range recordRounds {
		var old []byte
		if cur != "" {
			old = []byte(cur)
		}
		next, write := f(old)
		if !write {
			return nil
		}
		var cas, wait *redis.Cmd
		_, perr := cl.Pipelined(ctx, func(p redis.Pipeliner) error {
			cas = p.Eval(ctx, recordCAS, []string{k}, cur, string(next), px)
			if s.opts.WaitReplicas > 0 {
				wait = p.Do(ctx, "WAIT", s.opts.WaitReplicas, s.waitMillis())
			}
			return nil
		})
		if perr != nil {
			return fmt.Errorf("dedup: redis %s: write a record: %w", s.where(), perr)
		}
		res, err := cas.Slice()
		if err != nil || len(res) == 0 {
			return fmt.Errorf("dedup: redis %s: write a record: %v", s.where(), err)
		}
		if n, _ := res[0].(int64); n == 1 {
			if wait != nil {
				if n, err := wait.Int64(); err != nil || int(n) < s.opts.WaitReplicas {
					return fmt.Errorf("dedup: redis %s: WAIT: %d of %d replicas acknowledged a record (%v)", s.where(), n, s.opts.WaitReplicas, err)
				}
			}
			return nil
		}
		if len(res) < 2 {
			return fmt.Errorf("dedup: redis %s: write a record: unexpected answer %v", s.where(), res)
		}
		cur, _ = res[1].(string)
	}
	return fmt.Errorf("dedup: redis %s: a record changed %d times while it was written", s.where(), recordRounds)
}
