package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// casScript is the compare-and-set of one record. KEYS[1] the key; ARGV[1] the value read
// ("" = no key), ARGV[2] the value to write ("" = delete), ARGV[3] the TTL in milliseconds.
// The key may also already hold ARGV[2]: a retried write whose first attempt was applied
// but whose answer was lost. It returns {1} when written, {0, current} otherwise.
const casSource = `
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur == ARGV[1] or cur == ARGV[2] then
	if ARGV[2] == '' then
		redis.call('DEL', KEYS[1])
	else
		redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
	end
	return {1}
end
return {0, cur}
`

var casScript = redis.NewScript(casSource)

func (s *Store) loadScript(ctx context.Context) error {
	return s.rdb.ScriptLoad(ctx, casSource).Err()
}

// errNotPermitted marks a CONFIG GET the server refused (managed Redis, ACL).
var errNotPermitted = errors.New("CONFIG GET not permitted")

// checkDurability verifies what the package doc calls durable. With WaitReplicas = 0 every
// master must have appendonly yes and appendfsync always; a refused CONFIG GET is logged (at
// open) and accepted. It returns an error naming the setting and the fix, or the transport
// error.
func (s *Store) checkDurability(ctx context.Context, atOpen bool) error {
	if s.opts.WaitReplicas > 0 {
		if atOpen {
			s.checkReplicas(ctx)
		}
		return nil
	}
	var mu sync.Mutex
	var errs []error
	check := func(ctx context.Context, c *redis.Client) error {
		err := checkNode(ctx, c)
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		return nil
	}
	if s.cluster != nil {
		if err := s.cluster.ForEachMaster(ctx, check); err != nil {
			return fmt.Errorf("dedup: redis %s: %w", s.where(), err)
		}
	} else {
		err := checkConfig(ctx, s.rdb)
		errs = append(errs, err)
	}
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, errNotPermitted):
			if atOpen {
				s.log.Warn("durability of the Redis server could not be verified (CONFIG GET refused); make sure it runs with appendonly yes and appendfsync always, or set wait_replicas",
					slog.String("addrs", s.where()), slog.String("error", err.Error()))
			}
		default:
			return fmt.Errorf("dedup: redis %s: %w", s.where(), err)
		}
	}
	return nil
}

func checkNode(ctx context.Context, c *redis.Client) error { return checkConfig(ctx, c) }

func checkConfig(ctx context.Context, c redis.Cmdable) error {
	m, err := c.ConfigGet(ctx, "append*").Result()
	if err != nil {
		var rerr redis.Error
		var nerr net.Error
		if errors.As(err, &rerr) && !errors.As(err, &nerr) {
			return fmt.Errorf("%w: %v", errNotPermitted, err)
		}
		return err
	}
	if v := strings.ToLower(m["appendonly"]); v != "yes" {
		return durabilityError{fmt.Errorf("the server runs with appendonly %q, so an acknowledged write is lost when Redis restarts; "+
			"run it with appendonly yes and appendfsync always (redis.conf, or CONFIG SET appendonly yes, CONFIG SET appendfsync always, CONFIG REWRITE), "+
			"or set wait_replicas > 0 to wait for replicas instead", v)}
	}
	if v := strings.ToLower(m["appendfsync"]); v != "always" {
		return durabilityError{fmt.Errorf("the server runs with appendfsync %q, so an acknowledged write can be lost in a crash; "+
			"run it with appendfsync always (redis.conf, or CONFIG SET appendfsync always, CONFIG REWRITE), "+
			"or set wait_replicas > 0 to wait for replicas instead", v)}
	}
	return nil
}

// checkReplicas logs when the master has fewer connected replicas than WaitReplicas (the
// writer then holds every batch until they are there).
func (s *Store) checkReplicas(ctx context.Context) {
	info, err := s.rdb.Info(ctx, "replication").Result()
	if err != nil {
		return
	}
	for l := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "connected_slaves:"); ok {
			var n int
			if _, err := fmt.Sscan(v, &n); err == nil && n < s.opts.WaitReplicas {
				s.log.Warn("fewer replicas connected than wait_replicas; writes wait until enough are",
					slog.Int("connected", n), slog.Int("wait_replicas", s.opts.WaitReplicas))
			}
		}
	}
}
