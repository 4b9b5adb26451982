package redisstore

// The outbox in Redis (dedup.Outbox; docs/guarantees.md, "Transactions"): prepared
// transactional messages survive the loss of a pod, and every replica's checker sees them.
//
// Keys, all with the hash tag {outbox} so that each script's keys share one cluster slot:
//
//	<prefix>{outbox}:tx:<id>  hash: r = JSON of the dedup.TxRecord (without the claim),
//	                          owner, lease (unix ms) = the claim, final = "1" once resolved
//	<prefix>{outbox}:due      sorted set of the unresolved IDs, scored by NextCheck (unix ms)
//
// Every call is one script, synchronous, and durable as the dedup records are (package
// doc): it is refused while Ready reports a problem (not connected, appendfsync not
// always), and with WaitReplicas > 0 it is followed by WAIT on the same connection and
// fails when fewer replicas acknowledged. A final record expires after Options.TTL.
// Claims compare lease expiries with the calling replica's clock, as the dedup leases do.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqsidecar/mqsidecar/dedup"
)

var _ dedup.Outbox = (*Store)(nil)

func (s *Store) txKey(id string) string { return s.opts.KeyPrefix + "{outbox}:tx:" + id }
func (s *Store) dueKey() string         { return s.opts.KeyPrefix + "{outbox}:due" }

var (
	// KEYS tx, due; ARGV json, id, next-check ms. {1} stored, {0, r} exists.
	txPrepareScript = redis.NewScript(`
local r = redis.call('HGET', KEYS[1], 'r')
if r then return {0, r} end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'owner', '', 'lease', '0', 'final', '0')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return {1}`)
	// KEYS tx; ARGV owner, now ms, lease ms. {-1} none, {2, r} final, {0, r, owner, lease}
	// held, {1, r, owner, lease} claimed.
	txClaimScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'r', 'owner', 'lease', 'final')
if not v[1] then return {-1} end
if v[4] == '1' then return {2, v[1]} end
local now = tonumber(ARGV[2])
if v[2] ~= '' and tonumber(v[3]) > now then return {0, v[1], v[2], v[3]} end
local lease = tostring(now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', lease)
return {1, v[1], ARGV[1], lease}`)
	// KEYS tx, due; ARGV owner, now ms, json, final "1"/"0", next-check ms, id, ttl ms.
	// -1 none, 0 not the lease holder, 1 written.
	txUpdateScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'r', 'owner', 'lease')
if not v[1] then return -1 end
if v[2] ~= ARGV[1] or tonumber(v[3]) <= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[3], 'owner', '', 'lease', '0', 'final', ARGV[4])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
end
return 1`)
	// KEYS due; ARGV now ms, limit, tx key prefix. The due IDs no live lease holds;
	// IDs whose record is gone leave the set.
	txDueScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', ARGV[3] .. id, 'owner', 'lease', 'final')
  if not v[3] or v[3] == '1' then
    redis.call('ZREM', KEYS[1], id)
  elseif v[1] == '' or tonumber(v[2]) <= now then
    out[#out + 1] = id
    if #out >= limit then break end
  end
end
return out`)
)

// txRun runs one outbox script durably: once connected and ready, on one connection, with
// WAIT after it when WaitReplicas > 0.
func (s *Store) txRun(ctx context.Context, sc *redis.Script, keys []string, args ...any) (any, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("dedup: redis outbox: %w", dedup.ErrClosed)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*s.opts.Timeout)
	defer cancel()
	select {
	case <-s.up:
	case <-ctx.Done():
		return nil, fmt.Errorf("dedup: redis outbox: %w", s.Ready())
	}
	if err := s.Ready(); err != nil {
		return nil, fmt.Errorf("dedup: redis outbox: not durable now: %w", err)
	}
	var c redis.Cmdable = s.rdb
	if s.cluster != nil {
		m, err := s.cluster.MasterForKey(ctx, keys[0])
		if err != nil {
			return nil, fmt.Errorf("dedup: redis outbox: find the master: %w", err)
		}
		c = m
	}
	var (
		res  *redis.Cmd
		wait *redis.Cmd
	)
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		res = sc.Eval(ctx, p, keys, args...)
		if s.opts.WaitReplicas > 0 {
			wait = p.Do(ctx, "WAIT", s.opts.WaitReplicas, s.waitMillis())
		}
		return nil
	})
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("dedup: redis outbox: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("dedup: redis outbox: %w", err)
	}
	if wait != nil {
		n, werr := wait.Int()
		if werr != nil || n < s.opts.WaitReplicas {
			return nil, fmt.Errorf("dedup: redis outbox: WAIT: %d of %d replicas acknowledged (%v)", n, s.opts.WaitReplicas, werr)
		}
	}
	return res.Val(), nil
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func decodeTx(id string, raw any, owner, lease any) (dedup.TxRecord, error) {
	str, _ := raw.(string)
	var r dedup.TxRecord
	if err := json.Unmarshal([]byte(str), &r); err != nil {
		return r, fmt.Errorf("dedup: redis outbox %q: %w: %v", id, dedup.ErrCorrupt, err)
	}
	r.Owner, r.LeaseUntil = "", time.Time{}
	if o, _ := owner.(string); o != "" {
		l, _ := strconv.ParseInt(fmt.Sprint(lease), 10, 64)
		r.Owner, r.LeaseUntil = o, time.UnixMilli(l)
	}
	return r, nil
}

func encodeTx(r dedup.TxRecord) (string, error) {
	r.Owner, r.LeaseUntil = "", time.Time{}
	b, err := json.Marshal(r)
	return string(b), err
}

// TxPrepare implements dedup.Outbox.
func (s *Store) TxPrepare(ctx context.Context, r dedup.TxRecord) (dedup.TxRecord, error) {
	if r.State != dedup.TxPrepared || r.ID == "" {
		return dedup.TxRecord{}, fmt.Errorf("dedup: redis outbox prepare %q: state %s: %w", r.ID, r.State, dedup.ErrInvalid)
	}
	enc, err := encodeTx(r)
	if err != nil {
		return dedup.TxRecord{}, err
	}
	v, err := s.txRun(ctx, txPrepareScript, []string{s.txKey(r.ID), s.dueKey()}, enc, r.ID, ms(r.NextCheck))
	if err != nil {
		return dedup.TxRecord{}, err
	}
	a, _ := v.([]any)
	if len(a) == 2 {
		old, err := decodeTx(r.ID, a[1], nil, nil)
		if err != nil {
			return old, err
		}
		return old, fmt.Errorf("dedup: redis outbox prepare %q: %w", r.ID, dedup.ErrTxExists)
	}
	return r, nil
}

// TxGet implements dedup.Outbox.
func (s *Store) TxGet(ctx context.Context, id string) (dedup.TxRecord, error) {
	if s.closed.Load() {
		return dedup.TxRecord{}, fmt.Errorf("dedup: redis outbox: %w", dedup.ErrClosed)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	select {
	case <-s.up:
	case <-ctx.Done():
		return dedup.TxRecord{}, fmt.Errorf("dedup: redis outbox: %w", s.Ready())
	}
	v, err := s.rdb.HMGet(ctx, s.txKey(id), "r", "owner", "lease").Result()
	if err != nil {
		return dedup.TxRecord{}, fmt.Errorf("dedup: redis outbox %q: %w", id, err)
	}
	if v[0] == nil {
		return dedup.TxRecord{}, fmt.Errorf("dedup: redis outbox %q: %w", id, dedup.ErrTxNotFound)
	}
	return decodeTx(id, v[0], v[1], v[2])
}

// TxClaim implements dedup.Outbox.
func (s *Store) TxClaim(ctx context.Context, id, owner string, lease time.Duration) (dedup.TxRecord, error) {
	v, err := s.txRun(ctx, txClaimScript, []string{s.txKey(id)}, owner, s.now().UnixMilli(), lease.Milliseconds())
	if err != nil {
		return dedup.TxRecord{}, err
	}
	a, _ := v.([]any)
	code, _ := a[0].(int64)
	switch code {
	case -1:
		return dedup.TxRecord{}, fmt.Errorf("dedup: redis outbox %q: %w", id, dedup.ErrTxNotFound)
	case 2:
		return decodeTx(id, a[1], nil, nil)
	}
	r, err := decodeTx(id, a[1], a[2], a[3])
	if err == nil && code == 0 {
		err = fmt.Errorf("dedup: redis outbox %q: %w", id, dedup.ErrTxClaimed)
	}
	return r, err
}

// TxUpdate implements dedup.Outbox.
func (s *Store) TxUpdate(ctx context.Context, owner string, r dedup.TxRecord) error {
	if r.State == dedup.TxUnknown || r.State > dedup.TxRolledBack {
		return fmt.Errorf("dedup: redis outbox update %q: state %s: %w", r.ID, r.State, dedup.ErrInvalid)
	}
	now := s.now()
	final := "0"
	if r.State.Final() {
		final = "1"
		r.Message, r.NextCheck, r.Resolved = nil, time.Time{}, now
	}
	enc, err := encodeTx(r)
	if err != nil {
		return err
	}
	v, err := s.txRun(ctx, txUpdateScript, []string{s.txKey(r.ID), s.dueKey()},
		owner, now.UnixMilli(), enc, final, ms(r.NextCheck), r.ID, s.opts.TTL.Milliseconds())
	if err != nil {
		return err
	}
	switch v {
	case int64(-1):
		return fmt.Errorf("dedup: redis outbox %q: %w", r.ID, dedup.ErrTxNotFound)
	case int64(0):
		return fmt.Errorf("dedup: redis outbox update %q: %w", r.ID, dedup.ErrTxClaimed)
	}
	return nil
}

// TxDue implements dedup.Outbox.
func (s *Store) TxDue(ctx context.Context, now time.Time, limit int) ([]string, error) {
	v, err := s.txRun(ctx, txDueScript, []string{s.dueKey()}, now.UnixMilli(), limit, s.txKey(""))
	if err != nil {
		return nil, err
	}
	a, ok := v.([]any)
	if !ok {
		return nil, errors.New("dedup: redis outbox: unexpected TxDue answer")
	}
	ids := make([]string, 0, len(a))
	for _, x := range a {
		if id, ok := x.(string); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
