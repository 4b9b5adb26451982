package config

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Problem is one thing wrong with a configuration: the dotted key (or, for an unknown
// environment variable, its name) and what is wrong with it. Message never contains a secret.
type Problem = settings.Problem

// checker collects problems (settings.Checker, shared with the broker sections).
type checker = settings.Checker

// ValidationError lists every problem found in a configuration, sorted by key (problems of
// one key keep the order in which they were found).
type ValidationError struct {
	Problems []Problem
}

// Error returns one line per problem, "config: <key>: <what is wrong>", sorted by key.
func (e *ValidationError) Error() string {
	ps := slices.Clone(e.Problems)
	slices.SortStableFunc(ps, func(a, b Problem) int { return strings.Compare(a.Key, b.Key) })
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = "config: " + p.Key + ": " + p.Message
	}
	return strings.Join(lines, "\n")
}

func newValidationError(ps []Problem) *ValidationError {
	ps = slices.Clone(ps)
	slices.SortStableFunc(ps, func(a, b Problem) int { return strings.Compare(a.Key, b.Key) })
	return &ValidationError{Problems: ps}
}

// Validate checks every rule of docs/guarantees.md "Configuration" and returns a *ValidationError listing
// every problem, or nil. Only the section of the selected source.kind is checked, so the
// sections of other brokers may hold anything. Validate reads the file system for the TLS
// files the selected source names (they must exist), but connects nowhere.
func (c Config) Validate() error {
	if ps := c.problems(); len(ps) > 0 {
		return newValidationError(ps)
	}
	return nil
}

// HasDeadLetter reports whether failed messages have somewhere to go: a dead-letter target,
// or a broker-side dead-letter mechanism (RabbitMQ "nack" into the queue's dead-letter
// exchange, RocketMQ "broker" into the group's %DLQ% topic).
func (c Config) HasDeadLetter() bool {
	if c.Delivery.DeadLetter.Target != "" {
		return true
	}
	b := c.Source.broker()
	return b != nil && b.BrokerDeadLetter()
}

// httpURL checks an absolute http(s) URL with a host. The message shows the URL with any
// password removed.
func httpURL(c *checker, key, raw string) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		c.Add(key, "must be an absolute http:// or https:// URL with a host, got %q", settings.RedactURL(raw))
		return
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			c.Add(key, "port %q is not a valid port number", p)
		}
	}
}

// problems runs every rule and returns what failed, unsorted.
func (c Config) problems() []Problem {
	var ck checker
	if b := c.Source.broker(); b != nil {
		b.Check(&ck, c.Delivery.DeadLetter.Target)
	} else {
		ck.OneOf("source.kind", c.Source.Kind, Kinds()...)
	}
	c.checkApp(&ck)
	c.checkDelivery(&ck)
	c.checkRest(&ck)
	return ck.Problems
}

func (c Config) checkApp(ck *checker) {
	a := c.App
	if a.URL == "" {
		ck.Add("app.url", "required: the URL the sidecar pushes messages to, e.g. http://127.0.0.1:8080/messages")
	} else {
		httpURL(ck, "app.url", a.URL)
	}
	if a.HealthURL != "" {
		httpURL(ck, "app.health_url", a.HealthURL)
	}
	if a.Timeout <= 0 {
		ck.Add("app.timeout", "must be greater than 0, got %s", a.Timeout)
	}
	switch {
	case strings.TrimSpace(a.EventType) == "":
		ck.Add("app.event_type", "required (it is the ce-type header), e.g. mqsidecar.message")
	case strings.ContainsFunc(a.EventType, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		ck.Add("app.event_type", "must not contain control characters (it is sent as the ce-type header)")
	}
	if a.MaxResponseBytes <= 0 {
		ck.Add("app.max_response_bytes", "must be greater than 0, got %d", a.MaxResponseBytes)
	}
	if f := a.TLS.CAFile; f != "" {
		if _, err := a.TLS.ClientConfig(); err != nil {
			ck.Add("app.tls.ca_file", "%s (a PEM file of the CAs that sign the app's certificate)", strings.TrimPrefix(err.Error(), "app.tls.ca_file: "))
		} else if !strings.HasPrefix(strings.ToLower(a.URL), "https://") && !strings.HasPrefix(strings.ToLower(a.HealthURL), "https://") {
			ck.Add("app.tls.ca_file", "is set, but neither app.url nor app.health_url is https://")
		}
	}
}

func (c Config) checkDelivery(ck *checker) {
	d := c.Delivery
	ck.OneOf("delivery.ordering", d.Ordering, "partition", "key", "none")
	if c.Source.Kind == "kafka" && c.Source.Kafka.Mode == "share" && d.Ordering != "none" {
		ck.Add("delivery.ordering", "must be none with source.kafka.mode: share (a share group hands records to any member in no order), got %q", d.Ordering)
	}
	if d.MaxInflight < 1 || d.MaxInflight > 100000 {
		ck.Add("delivery.max_inflight", "must be between 1 and 100000, got %d", d.MaxInflight)
	}
	if d.PartitionLookahead < 0 {
		ck.Add("delivery.partition_lookahead", "must be 0 (max_inflight/2) or positive, got %d", d.PartitionLookahead)
	}
	switch {
	case d.MaxAttempts < 0:
		ck.Add("delivery.max_attempts", "must be 0 (unlimited) or more, got %d", d.MaxAttempts)
	case d.MaxAttempts > 0 && !c.HasDeadLetter() && !d.DropAfterMaxAttempts:
		alt := ""
		if b := c.Source.broker(); b != nil && b.DeadLetterAlternative() != "" {
			alt = " (or " + b.DeadLetterAlternative() + ")"
		}
		ck.Add("delivery.max_attempts", "is %d, but no dead-letter target is configured, so messages would be dropped after %d attempts; "+
			"either set delivery.dead_letter.target%s, or set delivery.drop_after_max_attempts: true to drop them deliberately", d.MaxAttempts, d.MaxAttempts, alt)
	}
	b := d.Backoff
	if b.Initial <= 0 {
		ck.Add("delivery.backoff.initial", "must be greater than 0, got %s", b.Initial)
	}
	if b.Max < b.Initial {
		ck.Add("delivery.backoff.max", "must be at least delivery.backoff.initial (%s), got %s", b.Initial, b.Max)
	}
	if b.Multiplier < 1 {
		ck.Add("delivery.backoff.multiplier", "must be at least 1, got %v", b.Multiplier)
	}
	if d.MaxMessageBytes < 0 {
		ck.Add("delivery.max_message_bytes", "must be 0 (no limit) or more, got %d", d.MaxMessageBytes)
	}
	if d.MaxBufferBytes < 1<<20 {
		ck.Add("delivery.max_buffer_bytes", "must be at least 1048576 (1 MiB), got %d: it bounds the bytes of the messages the sidecar buffers and has in flight (default %d, 64 MiB)", d.MaxBufferBytes, DefaultMaxBufferBytes)
	}
}

func (c Config) checkRest(ck *checker) {
	if d := c.Dedup; d.Enabled {
		if d.TTL <= 0 {
			ck.Add("dedup.ttl", "must be greater than 0, got %s", d.TTL)
		}
		switch d.Store {
		case "bbolt":
			if strings.TrimSpace(d.Path) == "" {
				ck.Add("dedup.path", "required when dedup.enabled is true")
			}
			if d.MaxEntries < 0 {
				ck.Add("dedup.max_entries", "must be 0 (bounded by ttl only) or more, got %d", d.MaxEntries)
			}
		case "redis":
			c.checkDedupRedis(ck)
		default:
			ck.OneOf("dedup.store", d.Store, "bbolt", "redis")
		}
	}
	if l := c.Admin.Listen; l != "" {
		if msg := settings.CheckHostPort(l, false); msg != "" {
			ck.Add("admin.listen", "%q: %s, or \"\" to disable the admin listener", l, msg)
		}
	}
	c.Publish.Check(ck)
	if c.ShutdownTimeout <= 0 {
		ck.Add("shutdown_timeout", "must be greater than 0, got %s", c.ShutdownTimeout)
	}
	if c.DrainDelay < 0 {
		ck.Add("drain_delay", "must be 0 or more, got %s", c.DrainDelay)
	}
	if i := c.Durability.Interval; i != 0 && i < 10*time.Second {
		ck.Add("durability.interval", "must be 0 (check at start only) or at least 10s, got %s", i)
	}
	if e := c.Tracing.Endpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ck.Add("tracing.endpoint", "%q must be an http:// or https:// URL (the OTLP receiver, e.g. http://otel-collector:4318, or :4317 for gRPC), or \"\" for OTEL_EXPORTER_OTLP_ENDPOINT", RedactURL(e))
		}
	}
	ck.OneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	ck.OneOf("log.format", c.Log.Format, "json", "text")
}

func (c Config) checkDedupRedis(ck *checker) {
	d, r := c.Dedup, c.Dedup.Redis
	if len(r.Addrs) == 0 {
		ck.Add("dedup.redis.addrs", "required when dedup.store is redis: at least one host:port (the server, the cluster nodes, or the Sentinels with dedup.redis.master_name), e.g. [redis.internal:6379]")
	} else {
		ck.HostPorts("dedup.redis.addrs", r.Addrs, "credentials go in dedup.redis.username and password")
	}
	if d.MaxEntries != 0 && d.MaxEntries != dedup.DefaultMaxEntries {
		ck.Add("dedup.max_entries", "applies to the bbolt store only; with dedup.store: redis the number of IDs is bounded by dedup.ttl (and the server's maxmemory): set it to 0")
	}
	if r.DB < 0 {
		ck.Add("dedup.redis.db", "must be 0 or more, got %d", r.DB)
	}
	if r.DB != 0 && len(r.Addrs) > 1 && r.MasterName == "" {
		ck.Add("dedup.redis.db", "is %d, but several dedup.redis.addrs without master_name mean a Redis Cluster, which has database 0 only", r.DB)
	}
	if r.Username != "" && r.Password == "" {
		ck.Add("dedup.redis.password", "required when dedup.redis.username is set (or set dedup.redis.password_file, or %s)", EnvVar("dedup.redis.password"))
	}
	if r.WaitReplicas < 0 {
		ck.Add("dedup.redis.wait_replicas", "must be 0 (the server fsyncs: appendonly yes, appendfsync always) or more, got %d", r.WaitReplicas)
	}
	if r.Timeout <= 0 {
		ck.Add("dedup.redis.timeout", "must be greater than 0, got %s", r.Timeout)
	}
	switch {
	case r.Lease < time.Second:
		ck.Add("dedup.redis.lease", "must be at least 1s, got %s", r.Lease)
	case r.Timeout > 0 && r.Lease < 2*r.Timeout:
		ck.Add("dedup.redis.lease", "is %s, but it must be at least twice dedup.redis.timeout (%s): leases are renewed every lease/3, and a renewal may take a timeout", r.Lease, r.Timeout)
	}
	if p := r.KeyPrefix; strings.ContainsAny(p, "{}") || strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ' ' }) {
		ck.Add("dedup.redis.key_prefix", "%q must not contain { } (the ID is the key's hash tag), spaces or control characters", p)
	}
	r.TLS.Check(ck, "dedup.redis.tls", r.TLS.Enabled, "set dedup.redis.tls.enabled: true, or remove the TLS options")
}
