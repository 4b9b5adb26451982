// Package redisstore is the dedup store shared by a fleet: every replica of one consumer
// group records message IDs in one Redis (a single server or Valkey, Sentinel, or Redis
// Cluster), so that a completed ID is never pushed again by any replica and one ID is not
// pushed by two replicas at once. It implements what the ack gate needs (ackgate.Store)
// with the contract of the embedded bbolt store (package dedup), plus leases.
//
// # Contract
//
// Keys: one key per message ID, <KeyPrefix>{<id>}, hash-tagged so that in a cluster the
// record lives on the slot of its ID. The value is a compact binary record (state, attempts,
// next-attempt time, write time, lease expiry, owner); about 20 bytes for a Completed ID
// plus the key.
//
// Writes are asynchronous and pipelined. Update and Put queue a request and return; one
// writer goroutine collects what is queued (up to Options.MaxBatch requests) and sends it
// as one pipeline: a batch costs one round trip when it only writes (Put), two when it
// holds Updates (a pipelined GET of their records, then the pipelined writes). done is
// called exactly once per request, after the batch is durable (below), in the order the
// requests were queued. Requests for one ID are applied in call order and a later write
// wins. done and Update's f run on the writer goroutine: they must be cheap and must not
// call the store.
//
// Update is a compare-and-set: f receives the record read from Redis and its result is
// written only if the key still holds exactly what was read (a small Lua script compares
// the raw value). When another replica wrote the key in between, the script answers with
// the current value, f is called again with it, and the new result is compared and set in
// turn. So f may run more than once for one Update; done receives the prior of the call
// whose result was written (or of the last call, when it chose not to write). write=false
// leaves the key untouched; next.State Unknown deletes it. Put writes unconditionally.
//
// Durable: done(nil) means Redis acknowledged the write and, with WaitReplicas = 0, that
// the server appends every write to its append-only file and fsyncs it before answering
// (appendonly yes, appendfsync always): the record survives a kill -9 or power cut of the
// Redis host. The writer checks both settings with CONFIG GET when it connects and every
// 30 s. While the server reports otherwise (at start as later), no request is reported
// done: they wait as in an outage, Ready names the setting and the fix, the finding is
// logged once at error level, and the settings are checked every second, so that a CONFIG
// SET on the server resumes the writes without a restart. Where CONFIG is not permitted
// (managed Redis) a warning says that durability could not be verified. With
// WaitReplicas = n > 0, the writer sends WAIT n after each batch and calls done(nil) only
// once at least n replicas acknowledged every write of the batch (durable against the loss
// of the primary, as far as Redis replication is; appendfsync is then not checked). Until
// then it keeps waiting and Ready reports it.
//
// Leases: every Store has an owner ID unique per process run (host, pid, random). An
// InFlight record is written with this owner and a lease until now+Options.Lease; every
// Lease/3 the writer renews, in one pipeline, the leases of the InFlight records it wrote
// and that still hold exactly what it wrote (a compare-and-set again), and it forgets a
// record once it writes it Completed, deletes it, or finds it changed by someone else.
// When Update reads an InFlight record owned by another owner whose lease has not expired,
// the prior handed to f has Elsewhere set: that replica may be pushing the message now.
// A record whose lease expired (its replica died or lost Redis for longer than the lease)
// is handed over as a plain InFlight record. An InFlight write with Entry.Released (the
// gate abandoning a message) and Release keep the record but end its lease at once, and
// Close releases every lease the store holds, so the other replicas take over without
// waiting.
//
// TTL: every write sets the key's expiry (PX) to Options.TTL; a lease renewal is a write,
// so a record lives TTL after its last write or renewal. Expiry is Redis's: nothing scans.
//
// Clock: records carry wall-clock times of the replica that wrote them, and other replicas
// compare lease expiries with their own clock. A lease is renewed to a full Lease every
// Lease/3, so the replicas' clocks may disagree by up to about Lease/2 (15 s with the
// default 30 s) before a live lease looks expired. Keep hosts on NTP.
//
// Start: New does not connect and starts no goroutine (the lifecycle of
// internal/lifecycle); Run runs the writer, which connects, so a Redis that is down at start is an
// outage like any other (below): requests queue and wait, and Ready reports "not connected
// yet" with the last error until the first connection succeeds. Credentials the server
// refuses (WRONGPASS, NOAUTH, NOPERM) are treated alike, logged once at error level and
// retried every 10 s, so that a fixed ACL or password is picked up without a restart.
//
// Failures: when Redis is unreachable, slow or answers with an error, the writer retries
// the whole batch with backoff (50 ms doubling to 2 s) until it succeeds; done is never
// called with a transient error, Ready reports the reason, and the queue fills up: Update
// and Put then block, which pauses consumption through the gate's admission bound. A
// retried write is idempotent (the script also accepts the value it is retrying). Only
// Close ends the retries: the requests still unwritten then get an error wrapping
// dedup.ErrClosed (whether a request that was on the wire at that moment was stored is
// unknown; the gate never acknowledges after such an error). A record that is not ours (not
// decodable, or of another Redis type) fails its own request with dedup.ErrCorrupt.
//
// Memory: at most 4*MaxBatch queued requests plus one batch, and one entry per InFlight
// record this store owns (bounded by what the gate has in flight).
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// Options configure New.
type Options struct {
	// Addrs are host:port addresses: one server (or one node of a cluster, which is
	// detected), several cluster nodes, or the Sentinels when MasterName is set.
	Addrs []string
	// MasterName selects Sentinel: the name of the monitored master.
	MasterName string
	// Username and Password authenticate (ACL user, or only the password); they are used
	// for the Sentinels too. Never logged.
	Username string
	Password string
	// DB is the database number (0 for a cluster).
	DB int
	// TLS, when set, is used for every connection.
	TLS *tls.Config
	// KeyPrefix starts every key; required. Two services sharing one Redis must differ.
	KeyPrefix string
	// TTL is how long an ID is remembered after its last write. Required, > 0.
	TTL time.Duration
	// Lease is how long an InFlight record stays owned without renewal; <= 0 means 30s.
	Lease time.Duration
	// WaitReplicas > 0 makes every batch wait for that many replicas (WAIT); 0 requires
	// appendonly yes and appendfsync always on the server.
	WaitReplicas int
	// Timeout bounds one round trip (dial, read, write, WAIT); <= 0 means 5s.
	Timeout time.Duration
	// MaxBatch is the most requests sent in one pipeline; <= 0 means 512.
	MaxBatch int
	// Logger receives state changes (open, failures and recoveries); nil = slog.Default().
	Logger *slog.Logger
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
	// OnCommit, when set, is called after every durable batch with its number of requests
	// and how long it took (retries included). It runs on the writer: cheap, no store calls.
	OnCommit func(requests int, took time.Duration)
	// OnError, when set, is called for every failed round trip (before the retry). It runs
	// on the writer: cheap, no store calls.
	OnError func(err error)
}

// Store is a dedup store in Redis. All methods are safe for concurrent use.
type Store struct {
	// rdb and cluster are set once by the writer when it connects, before up is closed.
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // nil unless rdb is a cluster client
	up      chan struct{}        // closed once connected
	opts    Options
	owner   string
	log     *slog.Logger
	now     func() time.Time

	queue      chan request
	closed     atomic.Bool
	inPut      atomic.Int64
	stop       chan struct{}
	stopCtx    context.Context // cancelled by Close: ends retries
	stopCancel context.CancelFunc
	writerLoop lifecycle.Loop // the writer: Run
	closeOnce  sync.Once
	closeErr   error
	noRelease  atomic.Bool // tests: Close like a crash, leases stay

	// notReady is the reason Ready reports, nil when healthy.
	notReady atomic.Pointer[error]

	// Owned by the writer.
	owned     map[string]ownedRecord
	failing   error // the failure being retried, nil when healthy
	lastOK    time.Time
	lastRenew time.Time
	lastCheck time.Time
	durable   error // the last durability check's finding, nil when fine
	givenUp   bool  // Close gave up on a failing batch: fail the rest at once
}

type ownedRecord struct {
	raw string
	rec record
}

type reqKind uint8

const (
	kindPut reqKind = iota
	kindUpdate
	kindRelease
)

type request struct {
	kind  reqKind
	id    string
	e     dedup.Entry
	done  func(error)
	f     func(prior dedup.Entry) (next dedup.Entry, write bool)
	udone func(prior dedup.Entry, err error)

	prior dedup.Entry
	err   error
}

// New validates opts; Run starts the writer, which connects to Redis (retrying until it
// can), checks durability and loads its script (see the package doc). It fails only for
// invalid options; until the writer is connected, Ready reports why not.
func New(opts Options) (*Store, error) {
	if opts.TTL <= 0 {
		return nil, fmt.Errorf("dedup: redis: ttl must be > 0, got %s", opts.TTL)
	}
	if len(opts.Addrs) == 0 {
		return nil, errors.New("dedup: redis: no address")
	}
	if opts.KeyPrefix == "" {
		return nil, errors.New("dedup: redis: key prefix is required")
	}
	if opts.WaitReplicas < 0 {
		return nil, fmt.Errorf("dedup: redis: wait_replicas must be >= 0, got %d", opts.WaitReplicas)
	}
	if opts.Lease <= 0 {
		opts.Lease = 30 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{
		opts:  opts,
		owner: newOwner(),
		log:   opts.Logger.With(slog.String("component", "dedup"), slog.String("store", "redis")),
		now:   opts.Now,
		up:    make(chan struct{}),
		queue: make(chan request, 4*opts.MaxBatch),
		stop:  make(chan struct{}),
		owned: map[string]ownedRecord{},
	}
	s.stopCtx, s.stopCancel = context.WithCancel(context.Background())
	s.setNotReady(fmt.Errorf("dedup: redis %s: not connected yet", s.where()))
	loggerOnce.Do(func() { redis.SetLogger(redisLogger{opts.Logger}) })
	return s, nil
}

// Run connects and runs the writer — batches, lease renewals, reconnects — until ctx is
// done or Close; requests are answered only while it runs. Cancelling ctx closes the store
// as Close does. Run returns nil; it runs at most once.
func (s *Store) Run(ctx context.Context) error {
	return s.writerLoop.Run(ctx, func() { _ = s.Close() }, func() error { s.run(); return nil })
}

var loggerOnce sync.Once

// redisLogger sends go-redis's own log lines (pool dial failures, which the store reports
// itself, once per outage) to slog at debug level instead of stderr.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...), slog.String("component", "go-redis"))
}

// newOwner returns host-pid-random: unique per process run.
func newOwner() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "host"
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

func (s *Store) where() string {
	if len(s.opts.Addrs) == 1 {
		return s.opts.Addrs[0]
	}
	return fmt.Sprint(s.opts.Addrs)
}

// connect builds the client and pings it. One address without MasterName may still be a
// cluster node: INFO cluster tells, and then a cluster client replaces the simple one.
func (s *Store) connect(ctx context.Context) (redis.UniversalClient, error) {
	o := s.opts
	uo := &redis.UniversalOptions{
		Addrs: o.Addrs, MasterName: o.MasterName, Username: o.Username, Password: o.Password,
		SentinelUsername: o.Username, SentinelPassword: o.Password,
		DB: o.DB, TLSConfig: o.TLS,
		DialTimeout: o.Timeout, ReadTimeout: o.Timeout, WriteTimeout: o.Timeout, PoolTimeout: o.Timeout,
		// The writer retries whole batches itself, with its own backoff.
		MaxRetries:      -1,
		DisableIdentity: true,
		PoolSize:        4,
		ClientName:      "mqsidecar",
	}
	rdb := redis.NewUniversalClient(uo)
	info, err := rdb.Info(ctx, "cluster").Result()
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	if _, isCluster := rdb.(*redis.ClusterClient); !isCluster && o.MasterName == "" && containsLine(info, "cluster_enabled:1") {
		_ = rdb.Close()
		uo.IsClusterMode = true
		rdb = redis.NewUniversalClient(uo)
		if err := rdb.Ping(ctx).Err(); err != nil {
			_ = rdb.Close()
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	return rdb, nil
}

func containsLine(text, line string) bool {
	for l := range strings.Lines(text) {
		if strings.TrimRight(l, "\r\n") == line {
			return true
		}
	}
	return false
}

// key is <prefix>{<id>}: the hash tag keeps one ID's record on one slot.
func (s *Store) key(id string) string {
	return s.opts.KeyPrefix + "{" + id + "}"
}

// Owner returns this store's owner ID (host-pid-random), for logs and tests.
func (s *Store) Owner() string { return s.owner }

// Ready returns nil while Redis answers and every write is durable as configured, else the
// reason (not connected yet, Redis unreachable, credentials refused, WAIT short of
// replicas, appendonly or appendfsync not as required, store closed).
func (s *Store) Ready() error {
	if s.closed.Load() {
		return fmt.Errorf("dedup: redis: %w", dedup.ErrClosed)
	}
	if p := s.notReady.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Store) setNotReady(err error) {
	if err == nil {
		s.notReady.Store(nil)
		return
	}
	s.notReady.Store(&err)
}

// Get returns the record of id as Redis has it now (Unknown when absent or expired), with
// Elsewhere set as Update's f would see it. It is synchronous and fails with the Redis error
// when Redis does not answer within Options.Timeout (with Ready's reason when the store is
// not connected by then), with ErrClosed after Close, and with
// ErrCorrupt for a value that is not a dedup record.
func (s *Store) Get(id string) (dedup.Entry, error) {
	if s.closed.Load() {
		return dedup.Entry{}, fmt.Errorf("dedup: get %q: %w", id, dedup.ErrClosed)
	}
	if len(id) == 0 || len(id) > dedup.MaxIDLen {
		return dedup.Entry{}, fmt.Errorf("dedup: get: id of %d bytes: %w", len(id), dedup.ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	select {
	case <-s.up:
	case <-ctx.Done():
		return dedup.Entry{}, fmt.Errorf("dedup: get %q: %w", id, s.Ready())
	}
	raw, err := s.rdb.Get(ctx, s.key(id)).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return dedup.Entry{}, nil
	case isWrongType(err):
		return dedup.Entry{}, fmt.Errorf("dedup: get %q: %w: %v", id, dedup.ErrCorrupt, err)
	case err != nil:
		return dedup.Entry{}, fmt.Errorf("dedup: get %q: %w", id, err)
	}
	rec, err := decodeRecord(raw)
	if err != nil {
		return dedup.Entry{}, fmt.Errorf("dedup: get %q: %w: %v", id, dedup.ErrCorrupt, err)
	}
	return rec.entry(s.owner, s.now()), nil
}

// Put queues an unconditional write of e for id; done(nil) once it is durable (package
// doc). e.State Unknown deletes id; an InFlight record is stamped with this store's owner
// and lease. Put blocks while the queue is full. For an invalid id or entry, and after
// Close, done is called at once on the caller's goroutine with an error wrapping
// dedup.ErrInvalid or dedup.ErrClosed. done may be nil.
func (s *Store) Put(id string, e dedup.Entry, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	if err := validate(id, e); err != nil {
		done(err)
		return
	}
	s.enqueue(request{kind: kindPut, id: id, e: e, done: done}, func(err error) { done(err) })
}

// Update queues a compare-and-set of id (package doc): f receives the current record
// (Elsewhere set when another live replica holds it) and returns the record to write, or
// write=false. done receives the prior f saw and nil once the write is durable. f may be
// called more than once. Queueing, blocking and Close behave as for Put.
func (s *Store) Update(id string, f func(prior dedup.Entry) (next dedup.Entry, write bool), done func(prior dedup.Entry, err error)) {
	if done == nil {
		done = func(dedup.Entry, error) {}
	}
	if len(id) == 0 || len(id) > dedup.MaxIDLen {
		done(dedup.Entry{}, fmt.Errorf("dedup: update: id of %d bytes (want 1..%d): %w", len(id), dedup.MaxIDLen, dedup.ErrInvalid))
		return
	}
	s.enqueue(request{kind: kindUpdate, id: id, f: f, udone: done}, func(err error) { done(dedup.Entry{}, err) })
}

// Release queues the end of this store's lease on id: when the record is still InFlight
// and owned by this store, its lease is set to expired (state and attempts stay), so
// another replica may take the message over at once. done may be nil.
func (s *Store) Release(id string, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	if len(id) == 0 || len(id) > dedup.MaxIDLen {
		done(fmt.Errorf("dedup: release: id of %d bytes: %w", len(id), dedup.ErrInvalid))
		return
	}
	s.enqueue(request{kind: kindRelease, id: id, done: done}, done)
}

func (s *Store) enqueue(r request, fail func(error)) {
	// inPut is raised before closed is checked, so once the writer has seen closed and
	// then inPut == 0, every request that passed the check has been sent.
	s.inPut.Add(1)
	if s.closed.Load() {
		s.inPut.Add(-1)
		fail(fmt.Errorf("dedup: %q: %w", r.id, dedup.ErrClosed))
		return
	}
	s.queue <- r
	s.inPut.Add(-1)
}

// PutSync is Put followed by waiting for done. Do not call it from a done callback.
func (s *Store) PutSync(id string, e dedup.Entry) error {
	ch := make(chan error, 1)
	s.Put(id, e, func(err error) { ch <- err })
	return <-ch
}

// Close stops accepting requests, writes what is queued while Redis answers (a batch that
// is failing, and everything after it, and everything when the store never connected, gets
// an error wrapping dedup.ErrClosed), releases
// the leases this store holds, and closes the connections. It is idempotent: later calls
// return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		s.writerLoop.Stop(s.run) // without Run: what is queued fails with ErrClosed
		if s.rdb != nil {        // nil when never connected
			if err := s.rdb.Close(); err != nil {
				s.closeErr = fmt.Errorf("dedup: redis: close: %w", err)
			}
		}
		s.log.Info("dedup store closed")
	})
	return s.closeErr
}

func validate(id string, e dedup.Entry) error {
	if len(id) == 0 || len(id) > dedup.MaxIDLen {
		return fmt.Errorf("dedup: put: id of %d bytes (want 1..%d): %w", len(id), dedup.MaxIDLen, dedup.ErrInvalid)
	}
	if e.State > dedup.Completed {
		return fmt.Errorf("dedup: put %q: %s: %w", id, e.State, dedup.ErrInvalid)
	}
	if e.Attempts < 0 {
		return fmt.Errorf("dedup: put %q: attempts %d: %w", id, e.Attempts, dedup.ErrInvalid)
	}
	return nil
}

func isWrongType(err error) bool { return err != nil && redis.HasErrorPrefix(err, "WRONGTYPE") }
