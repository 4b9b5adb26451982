package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqsidecar/mqsidecar/dedup"
)

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
	// tick is how often the idle writer looks at renewals, health and durability.
	tick = 250 * time.Millisecond
	// pingIdle: an idle writer pings Redis when nothing succeeded for this long, so Ready
	// notices an outage without traffic.
	pingIdle = time.Second
)

// Variables for tests.
var (
	// recheckEvery is how often the durability settings are checked again.
	recheckEvery = 30 * time.Second
	// authRetry is how often a connection is tried again while the server refuses the
	// credentials (a configuration error: no need to hammer it).
	authRetry = 10 * time.Second
)

// errStopping ends a retry loop when Close was called.
var errStopping = errors.New("stopping")

// run is the writer goroutine.
func (s *Store) run() {
	if !s.connectLoop() {
		s.givenUp = true // closed before it ever connected: what is queued gets ErrClosed
		s.drain()
		return
	}
	t := time.NewTicker(min(tick, s.opts.Lease/6)) // renewals within a sixth of a lease
	defer t.Stop()
	batch := make([]request, 0, s.opts.MaxBatch)
	for {
		select {
		case r := <-s.queue:
			batch = s.collect(append(batch[:0], r))
			s.process(batch)
			clear(batch)
		case <-t.C:
			s.maintain()
		case <-s.stop:
			s.drain()
			return
		}
	}
}

// connectLoop opens the connection, retrying with the outage backoff (every authRetry
// while the server refuses the credentials) until it succeeds, or until Close (false).
// Meanwhile requests wait in the queue and Ready reports the last error.
func (s *Store) connectLoop() bool {
	loggedAuth := false
	for attempt := 1; ; attempt++ {
		err := s.open()
		if err == nil {
			return true
		}
		err = fmt.Errorf("dedup: redis %s: not connected yet: %w", s.where(), err)
		if s.opts.OnError != nil {
			s.opts.OnError(err)
		}
		wait, auth := backoff(attempt), isAuthError(err)
		switch {
		case auth:
			wait = authRetry
			if !loggedAuth {
				s.log.Error("Redis refuses the credentials; writes wait (not acknowledged) until it accepts them: "+
					"fix dedup.redis.username/password or the server's ACL", slog.Duration("retry_every", authRetry), slog.String("error", err.Error()))
				loggedAuth = true
			}
		case s.failing == nil:
			s.log.Warn("Redis not reachable yet; retrying with backoff, writes wait (not acknowledged)", slog.String("error", err.Error()))
		}
		s.failing = err
		s.updateReady()
		if s.sleep(wait) != nil {
			return false
		}
	}
}

// open connects, checks durability and loads the script. A server found not durable is
// connected all the same: the writer then holds every write until it is (noteDurable).
func (s *Store) open() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.opts.Timeout)
	defer cancel()
	go func() { // Close ends an attempt at once
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	rdb, err := s.connect(ctx)
	if err != nil {
		return err
	}
	s.rdb = rdb
	s.cluster, _ = rdb.(*redis.ClusterClient)
	durable := s.checkDurability(ctx, true)
	if durable != nil && !isDurabilityFinding(durable) {
		err = durable
	} else if lerr := s.loadScript(ctx); lerr != nil {
		err = fmt.Errorf("load script: %w", lerr)
	}
	if err != nil {
		_ = rdb.Close()
		s.rdb, s.cluster = nil, nil
		return err
	}
	s.lastOK, s.lastRenew, s.lastCheck = time.Now(), time.Now(), time.Now()
	s.failing = nil
	close(s.up)
	o := s.opts
	s.log.Info("dedup store connected",
		slog.String("addrs", s.where()), slog.Bool("cluster", s.cluster != nil),
		slog.String("master_name", o.MasterName), slog.String("key_prefix", o.KeyPrefix),
		slog.Duration("ttl", o.TTL), slog.Duration("lease", o.Lease),
		slog.Int("wait_replicas", o.WaitReplicas), slog.String("owner", s.owner))
	s.noteDurable(durable)
	return nil
}

// isAuthError reports a server refusing the credentials or the user's permissions.
func isAuthError(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOAUTH") || redis.HasErrorPrefix(err, "NOPERM")
}

// collect adds what is queued, up to MaxBatch.
func (s *Store) collect(batch []request) []request {
	for len(batch) < s.opts.MaxBatch {
		select {
		case r := <-s.queue:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// drain writes what is queued (Close), failing the rest once a batch cannot be written,
// then releases the leases this store holds.
func (s *Store) drain() {
	batch := make([]request, 0, s.opts.MaxBatch)
	for {
		batch = batch[:0]
		for len(batch) < s.opts.MaxBatch {
			select {
			case r := <-s.queue:
				batch = append(batch, r)
				continue
			default:
			}
			if s.inPut.Load() == 0 && len(s.queue) == 0 {
				break
			}
			if len(batch) > 0 {
				break
			}
			time.Sleep(50 * time.Microsecond) // a request between its closed check and its send
		}
		if len(batch) == 0 {
			break
		}
		s.process(batch)
	}
	if !s.noRelease.Load() {
		s.releaseAll()
	}
	s.stopCancel()
}

// maintain runs on the idle tick: lease renewals, a ping when idle, durability rechecks.
func (s *Store) maintain() {
	now := time.Now()
	if len(s.owned) > 0 && now.Sub(s.lastRenew) >= s.opts.Lease/3 {
		s.renew()
		s.lastRenew = now
	}
	// While the server is known not to be durable, look again every second: writes wait.
	if now.Sub(s.lastCheck) >= recheckEvery || s.durable != nil && now.Sub(s.lastCheck) >= time.Second {
		s.lastCheck = now
		ctx, cancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
		err := s.checkDurability(ctx, false)
		cancel()
		s.noteDurable(err)
		if err != nil {
			return
		}
	}
	if s.failing != nil || s.durable != nil || now.Sub(s.lastOK) >= pingIdle {
		ctx, cancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
		err := s.rdb.Ping(ctx).Err()
		cancel()
		if err != nil {
			s.fail(fmt.Errorf("dedup: redis %s: %w", s.where(), err))
		} else {
			s.ok()
		}
	}
}

// noteDurable records the result of a durability check (nil = durable).
func (s *Store) noteDurable(err error) {
	var rerr redis.Error
	if err != nil && !errors.As(err, &rerr) && !isDurabilityFinding(err) {
		// Unreachable: that is a failure, not a finding about durability.
		s.fail(err)
		return
	}
	if err != nil && s.durable == nil {
		s.log.Error("Redis is not durable as required; holding every write (not acknowledged) until it is, checked every second", slog.String("error", err.Error()))
	} else if err == nil && s.durable != nil {
		s.log.Info("Redis is durable again")
	}
	s.durable = err
	s.updateReady()
}

func isDurabilityFinding(err error) bool {
	var d durabilityError
	return errors.As(err, &d)
}

// durabilityError marks a server found not durable (appendonly/appendfsync).
type durabilityError struct{ error }

func (s *Store) fail(err error) {
	if s.opts.OnError != nil {
		s.opts.OnError(err)
	}
	if s.failing == nil {
		s.log.Warn("Redis request failed; retrying with backoff, writes wait (not acknowledged)", slog.String("error", err.Error()))
	}
	s.failing = err
	s.updateReady()
}

func (s *Store) ok() {
	s.lastOK = time.Now()
	if s.failing != nil {
		s.log.Info("Redis answers again; writes resume", slog.String("after", s.failing.Error()))
		s.failing = nil
		// The server may have been replaced or reconfigured while we could not see it.
		s.lastCheck = time.Time{}
	}
	s.updateReady()
}

func (s *Store) updateReady() {
	switch {
	case s.failing != nil:
		s.setNotReady(s.failing)
	case s.durable != nil:
		s.setNotReady(s.durable)
	default:
		s.setNotReady(nil)
	}
}

// backoff is the wait before retry n (1 = the first retry).
func backoff(n int) time.Duration {
	d := min(minBackoff<<min(n-1, 8), maxBackoff)
	return d/2 + rand.N(d/2+1) // jitter, so a fleet does not retry in waves
}

// sleep waits for d, or returns errStopping.
func (s *Store) sleep(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-s.stopCtx.Done():
		return errStopping
	case <-s.stop:
		return errStopping
	}
}

// idOps is what one batch does to one ID.
type idOps struct {
	id, key string
	reqs    []int // indexes into the batch, in call order
	// cond: the first request reads the record (Update, Release), so the write is a
	// compare-and-set against expected; otherwise it is unconditional.
	cond     bool
	read     bool   // expected has been read
	expected string // raw value read ("" = no key)
	write    bool   // something to write
	final    string // raw value to write ("" = delete)
	rec      record // final, decoded
	applied  bool   // apply ran (final is current)
	done     bool   // written (or nothing to write)
}

// process writes one batch until it is durable, then calls the done callbacks in order.
// While Close is pending, a failing batch is given up: its requests get ErrClosed.
func (s *Store) process(batch []request) {
	began := time.Now()
	if s.givenUp {
		s.finish(batch, fmt.Errorf("dedup: redis %s: %w", s.where(), dedup.ErrClosed))
		return
	}
	ops := make([]*idOps, 0, len(batch))
	byID := make(map[string]*idOps, len(batch))
	for i := range batch {
		r := &batch[i]
		o := byID[r.id]
		if o == nil {
			o = &idOps{id: r.id, key: s.key(r.id), cond: r.kind != kindPut}
			byID[r.id] = o
			ops = append(ops, o)
		}
		o.reqs = append(o.reqs, i)
	}
	err := s.writeAll(batch, ops)
	if err != nil {
		s.givenUp = true
		err = fmt.Errorf("dedup: redis %s: %w (Redis did not answer; whether the write was stored is unknown)", s.where(), dedup.ErrClosed)
	} else {
		for _, o := range ops {
			if !o.write {
				continue
			}
			if o.rec.state == dedup.InFlight && o.rec.owner == s.owner && o.rec.leaseUntil != 0 {
				s.owned[o.id] = ownedRecord{raw: o.final, rec: o.rec}
			} else {
				delete(s.owned, o.id)
			}
		}
		if s.opts.OnCommit != nil {
			s.opts.OnCommit(len(batch), time.Since(began))
		}
	}
	s.finish(batch, err)
}

// finish calls the done callbacks of batch in order: each request's own error, else err.
func (s *Store) finish(batch []request, err error) {
	for i := range batch {
		r := &batch[i]
		rerr := r.err
		if rerr == nil {
			rerr = err
		}
		switch {
		case r.udone != nil:
			if rerr != nil {
				r.udone(dedup.Entry{}, rerr)
			} else {
				r.udone(r.prior, nil)
			}
		case r.done != nil:
			r.done(rerr)
		}
		batch[i] = request{}
	}
}

// writeAll reads, applies and writes until every ID is written and durable, retrying with
// backoff. It returns errStopping only when Close gave up on the batch.
func (s *Store) writeAll(batch []request, ops []*idOps) error {
	for attempt := 0; ; {
		err := s.readMissing(ops)
		if err == nil {
			for _, o := range ops {
				if !o.done && !o.applied {
					s.apply(batch, o)
				}
			}
			var conflicts bool
			conflicts, err = s.writeRound(batch, ops)
			if err == nil && conflicts {
				continue // re-applied with the values the script returned; no backoff
			}
			if err == nil {
				err = s.waitDurable()
			}
			if err == nil {
				s.ok()
				return nil
			}
		}
		switch {
		case errors.Is(err, errStopping):
			return err
		case isDurabilityFinding(err) && s.opts.OnError != nil:
			s.opts.OnError(err) // logged and reported by Ready already (noteDurable)
		case !isDurabilityFinding(err):
			s.fail(err)
		}
		if s.closed.Load() {
			return errStopping // Close ends the retries
		}
		attempt++
		if s.sleep(backoff(attempt)) != nil {
			return errStopping
		}
	}
}

// readMissing GETs, in one pipeline, the records of the conditional IDs not read yet.
func (s *Store) readMissing(ops []*idOps) error {
	var need []*idOps
	for _, o := range ops {
		if o.cond && !o.read && !o.done {
			need = append(need, o)
		}
	}
	if len(need) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
	defer cancel()
	cmds := make([]*redis.StringCmd, len(need))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, o := range need {
			cmds[i] = p.Get(ctx, o.key)
		}
		return nil
	})
	for i, o := range need {
		raw, cerr := cmds[i].Result()
		switch {
		case errors.Is(cerr, redis.Nil):
			o.expected, o.read = "", true
		case isWrongType(cerr):
			o.expected, o.read = "\x00wrongtype", true // fails its requests in apply
		case cerr == nil:
			o.expected, o.read = raw, true
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("dedup: redis %s: read: %w", s.where(), err)
	}
	return nil
}

// apply runs the requests of one ID in order against o.expected (conditional) or against
// nothing (the first request is a Put), and sets o.write, o.final and o.rec.
func (s *Store) apply(batch []request, o *idOps) {
	o.applied = true
	now := s.now()
	cur, decErr := decodeRecord(o.expected)
	if !o.cond {
		cur, decErr = record{}, nil
	}
	curRaw := o.expected
	o.write = false
	for _, i := range o.reqs {
		r := &batch[i]
		r.err = nil
		switch r.kind {
		case kindPut:
			cur = newRecord(r.e, s.owner, now, s.opts.Lease)
			curRaw, decErr, o.write = encodeOrDelete(cur), nil, true
		case kindUpdate:
			if decErr != nil {
				r.err = fmt.Errorf("dedup: update %q: %w: %v", r.id, dedup.ErrCorrupt, decErr)
				continue
			}
			prior := cur.entry(s.owner, now)
			r.prior = prior
			next, write := r.f(prior)
			if !write {
				continue
			}
			if next.State > dedup.Completed || next.Attempts < 0 {
				r.err = fmt.Errorf("dedup: update %q: %w: update to %s with %d attempts", r.id, dedup.ErrInvalid, next.State, next.Attempts)
				continue
			}
			cur = newRecord(next, s.owner, now, s.opts.Lease)
			curRaw, o.write = encodeOrDelete(cur), true
		case kindRelease:
			if decErr == nil && cur.state == dedup.InFlight && cur.owner == s.owner && cur.leaseUntil != 0 {
				cur.leaseUntil = 0
				curRaw, o.write = cur.encode(), true
			}
		}
	}
	if o.write && curRaw == o.expected && o.cond {
		o.write = false // nothing changes
	}
	o.final, o.rec = curRaw, cur
	if !o.write {
		o.done = true
	}
}

func encodeOrDelete(r record) string {
	if r.state == dedup.Unknown {
		return ""
	}
	return r.encode()
}

// writeRound sends the writes of every ID not done yet in one pipeline, followed by WAIT
// when WaitReplicas > 0 (WAIT covers the writes of its own connection, so it always travels
// in the pipeline of the writes; in a cluster, one pipeline per master). It reports whether
// some compare-and-set found another value: those IDs are re-applied and go into the next
// round. A WAIT that comes back short is an error: the caller retries the writes (they are
// idempotent) with their WAIT after a backoff.
func (s *Store) writeRound(batch []request, ops []*idOps) (conflicts bool, err error) {
	type sent struct {
		o   *idOps
		cmd redis.Cmder
	}
	var todo []sent
	px := strconv.FormatInt(s.opts.TTL.Milliseconds(), 10)
	ctx, cancel := context.WithTimeout(s.stopCtx, 2*s.opts.Timeout)
	defer cancel()
	queue := func(p redis.Pipeliner, o *idOps) {
		var c redis.Cmder
		switch {
		case o.cond:
			c = p.EvalSha(ctx, casScript.Hash(), []string{o.key}, o.expected, o.final, px)
		case o.final == "":
			c = p.Del(ctx, o.key)
		default:
			c = p.Set(ctx, o.key, o.final, s.opts.TTL)
		}
		todo = append(todo, sent{o, c})
	}
	var waits []*redis.Cmd
	var perr error
	if s.opts.WaitReplicas > 0 && s.cluster != nil {
		// Group by master, so that each master's WAIT follows its writes on one connection.
		groups := map[*redis.Client][]*idOps{}
		var order []*redis.Client
		for _, o := range ops {
			if o.done {
				continue
			}
			c, merr := s.cluster.MasterForKey(ctx, o.key)
			if merr != nil {
				return false, fmt.Errorf("dedup: redis %s: find the master of a key: %w", s.where(), merr)
			}
			if groups[c] == nil {
				order = append(order, c)
			}
			groups[c] = append(groups[c], o)
		}
		for _, c := range order {
			_, e := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, o := range groups[c] {
					queue(p, o)
				}
				waits = append(waits, p.Do(ctx, "WAIT", s.opts.WaitReplicas, s.waitMillis()))
				return nil
			})
			if e != nil && perr == nil {
				perr = e
			}
		}
	} else {
		_, perr = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, o := range ops {
				if !o.done {
					queue(p, o)
				}
			}
			if s.opts.WaitReplicas > 0 && len(todo) > 0 {
				waits = append(waits, p.Do(ctx, "WAIT", s.opts.WaitReplicas, s.waitMillis()))
			}
			return nil
		})
	}
	var firstErr error
	noscript := false
	for _, t := range todo {
		cerr := t.cmd.Err()
		switch {
		case cerr == nil:
		case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
			noscript = true
			continue
		case isWrongType(cerr):
			s.failIDCorrupt(batch, t.o, cerr)
			continue
		default:
			if firstErr == nil {
				firstErr = cerr
			}
			continue
		}
		if !t.o.cond {
			t.o.done = true
			continue
		}
		res, _ := t.cmd.(*redis.Cmd).Slice()
		if len(res) >= 1 && res[0] == int64(1) {
			t.o.done = true
			continue
		}
		cur := ""
		if len(res) >= 2 {
			cur, _ = res[1].(string)
		}
		// Someone else wrote the key since it was read: run f again on what it holds now.
		t.o.expected = cur
		s.apply(batch, t.o)
		conflicts = true
	}
	if noscript && firstErr == nil {
		// Redis lost its script cache (restarted, failed over, SCRIPT FLUSH): load it again;
		// the IDs still pending are retried at once.
		lctx, lcancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
		firstErr = s.loadScript(lctx)
		lcancel()
		if firstErr == nil {
			conflicts = true
		}
	}
	if firstErr == nil && perr != nil && !errors.Is(perr, redis.Nil) && !redis.HasErrorPrefix(perr, "NOSCRIPT") && !isWrongType(perr) {
		firstErr = perr
	}
	if firstErr == nil {
		for _, w := range waits {
			n, werr := w.Int64()
			switch {
			case werr != nil:
				firstErr = fmt.Errorf("WAIT: %w", werr)
			case int(n) < s.opts.WaitReplicas:
				firstErr = fmt.Errorf("WAIT: %d of %d replicas acknowledged the writes within %dms", n, s.opts.WaitReplicas, s.waitMillis())
			}
		}
	}
	if firstErr != nil {
		if s.opts.WaitReplicas > 0 {
			// Not known to be replicated: write again (idempotent) with the next WAIT.
			for _, t := range todo {
				if t.o.write {
					t.o.done = false
				}
			}
		}
		return false, fmt.Errorf("dedup: redis %s: write: %w", s.where(), firstErr)
	}
	return conflicts, nil
}

// failIDCorrupt fails the requests of an ID whose key holds another Redis type.
func (s *Store) failIDCorrupt(batch []request, o *idOps, cerr error) {
	for _, i := range o.reqs {
		batch[i].err = fmt.Errorf("dedup: %q: %w: %v", o.id, dedup.ErrCorrupt, cerr)
	}
	o.done, o.write = true, false
}

// waitDurable holds the batch while the server is known not to be durable as required
// (appendonly/appendfsync changed since New): the writes are done, done(nil) waits.
func (s *Store) waitDurable() error {
	if s.durable == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
	err := s.checkDurability(ctx, false)
	cancel()
	s.noteDurable(err)
	return err
}

// renew extends, in one pipeline, the leases of the InFlight records this store wrote and
// that still hold exactly what it wrote; it forgets those that changed.
func (s *Store) renew() {
	type sent struct {
		id  string
		or  ownedRecord
		cmd *redis.Cmd
	}
	now := s.now()
	px := strconv.FormatInt(s.opts.TTL.Milliseconds(), 10)
	todo := make([]sent, 0, len(s.owned))
	ctx, cancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, or := range s.owned {
			next := or.rec
			next.leaseUntil = now.Add(s.opts.Lease).UnixMilli()
			nraw := next.encode()
			todo = append(todo, sent{id, ownedRecord{raw: nraw, rec: next}, p.EvalSha(ctx, casScript.Hash(), []string{s.key(id)}, or.raw, nraw, px)})
		}
		return nil
	})
	for _, t := range todo {
		res, cerr := t.cmd.Slice()
		switch {
		case cerr != nil:
			// Transient (or NOSCRIPT: loaded again by the next batch); retried next time.
		case len(res) >= 1 && res[0] == int64(1):
			s.owned[t.id] = t.or
		default:
			delete(s.owned, t.id) // changed by someone else: no longer ours to renew
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			lctx, lcancel := context.WithTimeout(s.stopCtx, s.opts.Timeout)
			_ = s.loadScript(lctx)
			lcancel()
			s.lastRenew = time.Time{}
			return
		}
		s.fail(fmt.Errorf("dedup: redis %s: renew leases: %w", s.where(), err))
		return
	}
	s.ok()
}

// releaseAll ends, best effort and once, the leases this store holds (Close).
func (s *Store) releaseAll() {
	if len(s.owned) == 0 {
		return
	}
	px := strconv.FormatInt(s.opts.TTL.Milliseconds(), 10)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, or := range s.owned {
			next := or.rec
			next.leaseUntil = 0
			p.EvalSha(ctx, casScript.Hash(), []string{s.key(id)}, or.raw, next.encode(), px)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		s.log.Warn("could not release the leases of in-flight records; other replicas take them over when they expire",
			slog.Int("records", len(s.owned)), slog.Duration("lease", s.opts.Lease), slog.String("error", err.Error()))
	}
	clear(s.owned)
}

// waitMillis is WAIT's timeout: half a round trip's, so the answer arrives before the read
// deadline (WAIT 0 would block for ever).
func (s *Store) waitMillis() int64 {
	return max(s.opts.Timeout.Milliseconds()/2, 10)
}
