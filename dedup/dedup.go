// Package dedup is the embedded bbolt store that remembers message IDs, so that the ack gate
// never pushes a completed message twice (G2 in docs/guarantees.md) and keeps retry state across restarts.
//
// # Contract
//
// Writes are asynchronous and group-committed. Put queues a record and returns; a single
// writer goroutine collects the queued records (up to Options.MaxBatch), writes them in one
// bbolt transaction and commits it. bbolt's commit fsyncs (fdatasync) the data and then the
// meta page, so when a done callback receives nil the record is on disk and survives a
// kill -9 or a power cut. If the commit fails, every done callback of that batch receives the
// error and none of the batch is stored. done is called exactly once per Put.
//
// Ordering: records are applied in the order Put was called (the order in which they entered
// the queue); a later Put of the same ID wins. Done callbacks fire in that same order, one
// batch after another. They run on the writer goroutine, so they must be cheap and must not
// call Put, PutSync or Close (hand follow-up work to another goroutine).
//
// Throughput comes from batching: a commit costs two fdatasyncs whatever its size, so the
// more Puts are outstanding at once (many producers, or async Puts), the more records each
// commit carries. IDs that sort near each other (Kafka's topic/partition/offset) touch few
// pages per commit; random IDs (UUIDv4) touch about one 4 KiB page each.
//
// Reads: Get sees committed state only, never a queued or half-written batch. Update is a
// Put whose record is chosen from the current one inside the writing transaction (the ack
// gate's check-and-mark at admission: one transaction instead of a read and a write).
//
// TTL: an ID is reported by Get for exactly Options.TTL after its last write (its Updated
// time); after that it is Unknown. Storage is reclaimed in whole time slices: the ID space
// lives in one bbolt bucket per slice of width TTL/8 (at least one second), writes go to the
// newest slice, and a slice is dropped (one DeleteBucket) once its newest record is TTL old.
// So a record occupies disk for at least TTL and at most about TTL plus one slice width after
// its last write. Expiry never scans keys; its cost is one bucket deletion per slice. A TTL
// changed across restarts takes effect at once for Get and for every slice's expiry.
//
// Size: with Options.MaxEntries > 0 a slice is also closed once it holds MaxEntries/8 IDs,
// and when the slices together hold more than MaxEntries IDs the oldest slice is dropped
// before its TTL (logged once at warn level). The count is approximate: an ID rewritten in a
// newer slice is counted in both until the older slice goes. The store measures the rate of
// new IDs (from the IDs on disk at Open, then every minute) and warns when TTL × that rate
// does not fit in MaxEntries, and again when the rate has doubled or halved since.
//
// Full disk: a commit that fails because the file system has no room (ENOSPC or EDQUOT, from
// bbolt's writes, fdatasync or file growth) pauses the writer instead of failing: no done
// callback fires, so nothing is acknowledged that is not on disk, and nothing queued is
// lost; the same batch is tried again (after 100 ms, backing off to every 5 s) until it
// commits. Meanwhile Ready returns an error wrapping ErrDiskFull, and Put and Update block
// once the queue is full. When space is back the writer resumes by itself. Close during a
// pause tries once more, then fails the waiting records with ErrDiskFull. bbolt rolls back a
// failed transaction completely; the pages it wrote before failing are free pages of the
// last committed state, so the file stays consistent.
//
// Clock: all times come from Options.Now, the wall clock, because records must outlive
// restarts. A clock that jumps forward ages every record by the jump, so records expire
// early in real time; one that jumps back makes them look younger, so they live longer.
// Keep the host clock disciplined (NTP slews rather than steps).
//
// Crashes: after a kill -9 the newest slice's count and last-write time on disk may lag by
// up to a second (they are persisted at most once a second, and at Close, to keep commits
// small). Open then keeps that slice until its nominal end plus TTL, which is always safe,
// and treats its count as approximate.
//
// Memory: at most 4*MaxBatch queued Puts plus one batch; bbolt's mmap of the file is shared,
// reclaimable page cache.
//
// Files: Open takes an exclusive flock on the file, waiting at most Options.LockTimeout, so a
// second sidecar on the same file fails fast with ErrLocked instead of hanging. A file that
// is not a bbolt file, or is a bbolt file written by another program or another schema
// version, fails with ErrCorrupt; Open never modifies such a file.
//
// Lifecycle (internal/lifecycle): Open starts no goroutine. Run runs the writer until ctx
// is done or Close; Close commits what was queued (itself, when Run never ran), stops the
// writer and closes the file.
package dedup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// Errors returned by the store. Callers classify with errors.Is; the returned errors wrap
// these with the file path or the ID.
var (
	// ErrClosed is returned by Get and PutSync, and passed to Put's done callback, after
	// Close was called.
	ErrClosed = errors.New("store closed")

	// ErrLocked is returned by Open when another process (or another Store in this process)
	// holds the file lock for longer than Options.LockTimeout.
	ErrLocked = errors.New("file is locked by another process (is another mqsidecar running?)")

	// ErrCorrupt is returned by Open when the file is not a bbolt database, is damaged, or
	// is a bbolt database that is not an mqsidecar dedup store of this schema version, and
	// by Get when a stored record cannot be decoded. Move the file away to start afresh.
	ErrCorrupt = errors.New("file is corrupt or not an mqsidecar dedup store")

	// ErrInvalid is returned for an ID that bbolt cannot store (empty, or longer than
	// MaxIDLen bytes) and for an Entry with a negative Attempts or an unknown State.
	ErrInvalid = errors.New("invalid id or entry")
)

// MaxIDLen is the longest ID the store accepts (bbolt's key size limit).
const MaxIDLen = bolt.MaxKeySize

// State of an ID.
type State uint8

const (
	// Unknown means never seen, expired or deleted. Putting an Entry with State Unknown
	// deletes the ID.
	Unknown State = iota
	// InFlight means a push was (or is about to be) started and not completed; a
	// redelivery must be pushed with ce-redelivered: true.
	InFlight
	// Completed means the app answered 2xx, or the message was dead-lettered or dropped:
	// never push it again.
	Completed
)

// String returns the state's name, for logs.
func (s State) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case InFlight:
		return "in_flight"
	case Completed:
		return "completed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Entry is what the store remembers about one ID.
type Entry struct {
	State State
	// Attempts is the number of pushes started so far; persisted so that a restart neither
	// resets delivery.max_attempts nor makes ce-deliveryattempt lie.
	Attempts int
	// NextAttempt is the earliest time of the next push (persisted backoff); zero = none.
	NextAttempt time.Time
	// Updated is set by the store when the record is written; Put ignores the caller's value.
	Updated time.Time
	// Elsewhere is set on the prior entry handed to Update's f by a store shared by a
	// fleet: State is InFlight and the record is owned by another replica whose lease has
	// not expired, so that replica may be pushing the message right now. It is never
	// stored, and the embedded store (one process per file) never sets it.
	Elsewhere bool
	// Released, on an InFlight write, gives up this replica's claim: the record still says
	// "may have been pushed" (a later push is flagged ce-redelivered), but a shared store
	// keeps no lease for it, so another replica may take the message at once. The ack gate
	// writes it when it abandons a message (shutdown, a fenced partition). Never read back;
	// the embedded store ignores it.
	Released bool
}

// Options configure Open.
type Options struct {
	// TTL is how long an ID is remembered after its last write. Required, > 0.
	TTL time.Duration
	// MaxEntries bounds the number of remembered IDs, approximately; the oldest slice of
	// IDs is forgotten first. 0 = bounded by TTL only. The sidecar's default is
	// DefaultMaxEntries.
	MaxEntries int
	// LockTimeout is how long Open waits for the file lock; <= 0 means 1s.
	LockTimeout time.Duration
	// MaxBatch is the most Puts written in one commit; <= 0 means 1024.
	MaxBatch int
	// Linger is how long the writer waits for more Puts before committing a batch that is
	// not full; 0 commits as soon as the writer is free. A few hundred microseconds cut
	// the commits (and their fdatasyncs) per record several-fold at high rates, at the
	// cost of that much added latency per record.
	Linger time.Duration
	// MaxLinger, when longer than Linger, is how long a batch nobody waits for may wait
	// for more Puts: until Flush is called, the writer lingers up to MaxLinger, and after
	// it only up to Linger (both counted from the batch's first record). A caller that
	// blocks on a record calls Flush first; records written ahead of need (marks queued
	// behind a busy lane, completions) then share fewer, larger commits.
	MaxLinger time.Duration
	// Logger receives state changes (open, commit failures and recoveries, eviction);
	// nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
	// OnCommit, when set, is called after every successful commit with the number of
	// records it wrote, how long it took (fsyncs included) and the store's approximate
	// entry count, for metrics. It runs on the writer goroutine (possibly before Open
	// returns), so it must be cheap and must not call the store.
	OnCommit func(records int, took time.Duration, entries int64)
}

// Stats is a cheap snapshot for metrics.
type Stats struct {
	// Entries is the approximate number of live IDs (see the package doc on Size).
	Entries int64
	// Slices is the number of time-slice buckets on disk.
	Slices int
	// Commits is the number of successful commits; CommitErrors the number of failed ones.
	Commits      uint64
	CommitErrors uint64
	// LastBatch is the number of Puts in the last commit.
	LastBatch int
	// LastCommit is how long the last commit took, fsync included.
	LastCommit time.Duration
	// FileBytes is the size of the database file.
	FileBytes int64
	// ExpiredSlices counts slices dropped because of their TTL, EvictedSlices those dropped
	// early because of MaxEntries.
	ExpiredSlices uint64
	EvictedSlices uint64
}

// Store is an open dedup store. All methods are safe for concurrent use.
type Store struct {
	path string
	db   *bolt.DB
	ttl  time.Duration
	// width is the nominal time span of one slice; sliceCap the most IDs per slice (0 = no
	// limit), both fixed at Open.
	width    time.Duration
	sliceCap int
	opts     Options
	log      *slog.Logger
	now      func() time.Time

	// queue carries Puts to the writer. It is never closed: Put may race with Close, so
	// Close sets closed, and the writer drains until no Put is between its closed check
	// and its send (inPut == 0).
	queue      chan request
	flush      chan struct{} // Flush: a caller waits for what is queued (cap 1)
	holding    atomic.Int64  // records of the batch the writer lingers on (0: not lingering)
	closed     atomic.Bool
	inPut      atomic.Int64
	stop       chan struct{}
	writerLoop lifecycle.Loop // the writer: Run
	closeOnce  sync.Once
	closeErr   error
	// leases are the outbox IDs claimed in this process (outbox.go).
	leaseMu sync.Mutex
	leases  map[string]struct{}
	// paused is set while commits wait for disk space (see commitWith); nil otherwise.
	paused atomic.Pointer[pauseState]
	// recSweep guards recSweepAt, where the next sweep of expired records starts (records.go).
	recSweep   sync.Mutex
	recSweepAt []byte
	recs       recQueue // SwapRecord's group commit (records.go)

	// Owned by the writer goroutine (and by Open before it starts).
	slices       []slice // oldest first
	nextSeq      uint64
	evictWarned  bool
	failing      bool
	added        int64 // IDs newly counted since Open (see watchRate)
	rate         rateWatch
	arena        []byte    // reused for keys and values of each batch
	dataSize     int64     // bbolt's data size after the last commit
	statsWritten time.Time // when the newest slice's stats were last persisted

	st struct {
		entries, slices, lastBatch, lastCommit, fileBytes atomic.Int64
		commits, commitErrors, expired, evicted           atomic.Uint64
	}
}

type request struct {
	id   string
	e    Entry
	done func(error)

	// Update only: f decides e from the prior entry inside the transaction; udone
	// replaces done; err is this request's own failure (a record that cannot be decoded).
	f     func(prior Entry) (next Entry, write bool)
	udone func(prior Entry, err error)
	prior Entry
	err   error
}

// Open opens or creates the store at path, creating parent directories (0o750) as needed.
// It fails with an error wrapping ErrLocked or ErrCorrupt (see their docs) and naming path,
// for example "dedup: open /data/dedup.db: file is locked by another process (is another
// mqsidecar running?)". Open never waits longer than about Options.LockTimeout for the lock.
func Open(path string, opts Options) (*Store, error) {
	if opts.TTL <= 0 {
		return nil, fmt.Errorf("dedup: open %s: ttl must be > 0, got %s", path, opts.TTL)
	}
	if opts.MaxEntries < 0 {
		return nil, fmt.Errorf("dedup: open %s: max_entries must be >= 0, got %d", path, opts.MaxEntries)
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 1024
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{
		path:  path,
		ttl:   opts.TTL,
		width: max(opts.TTL/8, time.Second),
		opts:  opts,
		log:   opts.Logger.With(slog.String("component", "dedup"), slog.String("path", path)),
		now:   opts.Now,
		queue: make(chan request, 4*opts.MaxBatch),
		flush: make(chan struct{}, 1),
		stop:  make(chan struct{}),
	}
	if opts.MaxEntries > 0 {
		s.sliceCap = max(opts.MaxEntries/8, 1)
	}

	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("dedup: open %s: create directory: %w", path, err)
		}
	}
	began := time.Now()
	db, err := openBolt(path, opts.LockTimeout)
	if err != nil {
		return nil, err
	}
	s.db = db
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.publishSlices()
	s.st.fileBytes.Store(s.fileSize())
	s.log.Info("dedup store opened",
		slog.Int64("entries", s.st.entries.Load()),
		slog.Int("slices", len(s.slices)),
		slog.Duration("ttl", s.ttl),
		slog.Int("max_entries", opts.MaxEntries),
		slog.Int64("file_bytes", s.st.fileBytes.Load()),
		slog.Duration("took", time.Since(began)))
	s.judgeHistory()
	return s, nil
}

// Run runs the writer — group commits, expiry and eviction of slices, the rate check —
// until ctx is done or Close; Puts are committed only while it runs. Cancelling ctx
// closes the store as Close does. Run returns nil; it runs at most once.
func (s *Store) Run(ctx context.Context) error {
	return s.writerLoop.Run(ctx, func() { _ = s.Close() }, func() error { s.run(); return nil })
}

// openBolt opens the bbolt file, translating lock timeouts and damaged files to our
// sentinels. bbolt may panic on some damaged files; that is reported as ErrCorrupt too.
func openBolt(path string, lockTimeout time.Duration) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("dedup: open %s: %w: %v", path, ErrCorrupt, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: lockTimeout,
		// The freelist is rebuilt by scanning at open instead of being written on every
		// commit: fewer pages per commit. Commits still fsync (NoSync stays false).
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("dedup: open %s: %w", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, fmt.Errorf("dedup: open %s: %w: %w", path, ErrCorrupt, err)
	default:
		return nil, fmt.Errorf("dedup: open %s: %w", path, err)
	}
}

// Get returns what the store has committed for id. The newest record wins; a record older
// than TTL is reported as Unknown (zero Entry). It fails with ErrClosed after Close, and
// with an error wrapping ErrCorrupt when the stored record cannot be decoded.
func (s *Store) Get(id string) (Entry, error) {
	if s.closed.Load() {
		return Entry{}, fmt.Errorf("dedup: get %q: %w", id, ErrClosed)
	}
	if len(id) == 0 || len(id) > MaxIDLen {
		return Entry{}, fmt.Errorf("dedup: get: id of %d bytes: %w", len(id), ErrInvalid)
	}
	// bbolt only reads the key during Get, so the string's bytes can be used in place.
	key := unsafe.Slice(unsafe.StringData(id), len(id))
	var (
		e     Entry
		found bool
		derr  error
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(slicesBucket)
		if root == nil {
			return fmt.Errorf("%w: bucket %q missing", ErrCorrupt, slicesBucket)
		}
		c := root.Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			if v != nil {
				continue // not a bucket; Open rejects such files
			}
			b := root.Bucket(k)
			if b == nil {
				continue
			}
			if val := b.Get(key); val != nil {
				e, derr = decodeEntry(val)
				found = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			err = ErrClosed
		}
		return Entry{}, fmt.Errorf("dedup: get %q: %w", id, err)
	}
	if derr != nil {
		return Entry{}, fmt.Errorf("dedup: get %q: %w", id, derr)
	}
	if !found || !s.now().Before(e.Updated.Add(s.ttl)) {
		return Entry{}, nil
	}
	return e, nil
}

// Put queues a write of e for id and returns; done(nil) is called once the record is
// durably committed, done(err) if the commit failed (see the package doc for ordering).
// e.State == Unknown deletes id. e.Updated is ignored: the store sets it.
//
// Put blocks only while the queue (4*MaxBatch records) is full, which happens only when
// the disk cannot keep up (backpressure). After Close, and for an invalid id or entry,
// done is called at once on the caller's goroutine with an error wrapping ErrClosed or
// ErrInvalid. done may be nil.
func (s *Store) Put(id string, e Entry, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	if err := validate(id, e); err != nil {
		done(err)
		return
	}
	// inPut is raised before closed is checked, so once the writer has seen closed and
	// then inPut == 0, every Put that passed the check has finished its send.
	s.inPut.Add(1)
	if s.closed.Load() {
		s.inPut.Add(-1)
		done(fmt.Errorf("dedup: put %q: %w", id, ErrClosed))
		return
	}
	s.queue <- request{id: id, e: e, done: done}
	s.inPut.Add(-1)
	s.queued()
}

// queued nudges a lingering writer once a full batch is waiting: the queue's records and
// those the writer holds (holding, 0 while it does not linger: it then looks at the queue
// itself when it starts to, see linger). A nudge too early would make it commit a batch
// that is not full and linger again on the rest; holding is read first because the writer
// moves records from the queue into its batch just before it lingers, and reading the
// queue first could count them twice.
func (s *Store) queued() {
	held := int(s.holding.Load())
	if held > 0 && len(s.queue)+held >= s.opts.MaxBatch {
		s.Flush()
	}
}

// Update queues a read-modify-write of id. On the writer, inside the transaction that will
// commit it, f receives the entry Get would report for id at that point (records queued
// before it included) and returns the entry to write, or write=false to leave the record
// as it is; next.State Unknown deletes the record, as with Put. done then receives the entry f saw
// and nil once the transaction is durably committed, or the commit's error (nothing of the
// batch stored). A record that cannot be decoded fails this request alone, with an error
// wrapping ErrCorrupt, before f is called.
//
// It saves the separate read transaction of a Get followed by a Put, and the two cannot
// interleave with another writer. f and done run on the writer goroutine: they must be
// cheap and must not call the store. Queueing and Close behave as for Put.
func (s *Store) Update(id string, f func(prior Entry) (next Entry, write bool), done func(prior Entry, err error)) {
	if done == nil {
		done = func(Entry, error) {}
	}
	if len(id) == 0 || len(id) > MaxIDLen {
		done(Entry{}, fmt.Errorf("dedup: update: id of %d bytes (want 1..%d): %w", len(id), MaxIDLen, ErrInvalid))
		return
	}
	s.inPut.Add(1)
	if s.closed.Load() {
		s.inPut.Add(-1)
		done(Entry{}, fmt.Errorf("dedup: update %q: %w", id, ErrClosed))
		return
	}
	s.queue <- request{id: id, f: f, udone: done}
	s.inPut.Add(-1)
	s.queued()
}

// PutSync is Put followed by waiting for the commit. Do not call it from a done callback.
func (s *Store) PutSync(id string, e Entry) error {
	ch := make(chan error, 1)
	s.Put(id, e, func(err error) { ch <- err })
	return <-ch
}

// Close stops accepting Puts, commits every Put queued so far (their done callbacks fire),
// stops the writer and closes the file, releasing the lock. It is idempotent: later calls
// return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		s.writerLoop.Stop(s.run) // without Run, the queue is committed here
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("dedup: close %s: %w", s.path, err)
		}
		s.log.Info("dedup store closed",
			slog.Int64("entries", s.st.entries.Load()),
			slog.Uint64("commits", s.st.commits.Load()))
	})
	return s.closeErr
}

// Stats returns a snapshot of counters; it does no I/O and takes no lock.
func (s *Store) Stats() Stats {
	return Stats{
		Entries:       s.st.entries.Load(),
		Slices:        int(s.st.slices.Load()),
		Commits:       s.st.commits.Load(),
		CommitErrors:  s.st.commitErrors.Load(),
		LastBatch:     int(s.st.lastBatch.Load()),
		LastCommit:    time.Duration(s.st.lastCommit.Load()),
		FileBytes:     s.st.fileBytes.Load(),
		ExpiredSlices: s.st.expired.Load(),
		EvictedSlices: s.st.evicted.Load(),
	}
}

func validate(id string, e Entry) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("dedup: put: id of %d bytes (want 1..%d): %w", len(id), MaxIDLen, ErrInvalid)
	}
	if e.State > Completed {
		return fmt.Errorf("dedup: put %q: %s: %w", id, e.State, ErrInvalid)
	}
	if e.Attempts < 0 {
		return fmt.Errorf("dedup: put %q: attempts %d: %w", id, e.Attempts, ErrInvalid)
	}
	return nil
}

func (s *Store) fileSize() int64 {
	fi, err := os.Stat(s.path)
	if err != nil {
		return s.st.fileBytes.Load()
	}
	return fi.Size()
}

// publishSlices copies the writer's view of the slices into the stats. Writer only.
func (s *Store) publishSlices() {
	var n int64
	for i := range s.slices {
		n += int64(s.slices[i].count)
	}
	s.st.entries.Store(n)
	s.st.slices.Store(int64(len(s.slices)))
}
