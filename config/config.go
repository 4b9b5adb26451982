// Package config is the only package that knows about files, environment variables and
// flags. It decodes them once (viper), validates the result, and hands plain structs to the
// rest of the program; ackgate, dedup and the adapters never import viper.
//
// Each broker's section (source.kafka, source.rabbitmq, source.rocketmq) is declared,
// defaulted and checked in the broker's own folder (adapters/<kind>/settings.go, the
// interface settings.Broker); this package composes the sections into the file's shape
// (Source), and holds the general sections (app, delivery, dedup, admin, log) itself.
//
// Contract: Load either returns a Config that passed Validate, or an error whose text names
// every offending key and what is wrong with it ("delivery.max_inflight: must be at least 1,
// got 0"). Unknown keys are errors, so a typo never silently falls back to a default.
// Every key can be overridden by an environment variable MQSIDECAR_<KEY>, nested keys joined
// by "_" (MQSIDECAR_APP_URL, MQSIDECAR_SOURCE_KAFKA_BROKERS=a:9092,b:9092).
//
// The set of keys is derived from the mapstructure tags of Config by reflection (Keys), so a
// field added here is loadable, overridable from the environment and known to the
// unknown-key check without further work; a field needs a type the loader converts
// (string, Secret, []string, bool, int, int64, float64, time.Duration) and a line in
// example.yaml and testdata/full.yaml, which the tests require to show every key.
// example.yaml is the documented, fully commented example configuration.
package config

import (
	"reflect"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters/kafka"
	"github.com/mqsidecar/mqsidecar/adapters/rabbitmq"
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/settings"
	"github.com/mqsidecar/mqsidecar/publish"
)

// Config is the whole sidecar configuration (docs/guarantees.md, "Configuration").
type Config struct {
	Source          Source        `mapstructure:"source"`
	App             App           `mapstructure:"app"`
	Delivery        Delivery      `mapstructure:"delivery"`
	Dedup           Dedup         `mapstructure:"dedup"`
	Admin           Admin         `mapstructure:"admin"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// DrainDelay is how long the sidecar keeps consuming after SIGTERM with readiness
	// already false, so that Kubernetes endpoints update before the drain starts.
	DrainDelay time.Duration `mapstructure:"drain_delay"`
	Log        Log           `mapstructure:"log"`
	Durability Durability    `mapstructure:"durability"`
	Tracing    Tracing       `mapstructure:"tracing"`
	// Publish is the publish endpoint (package publish); off unless publish.listen is set.
	Publish Publish `mapstructure:"publish"`
}

// Tracing configures OpenTelemetry traces (package tracing): a consumer span per delivery
// and a client span per push, exported over OTLP/HTTP, or gRPC when
// OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc. Everything else (sampler, service
// name, resource attributes, headers, batching) comes from the standard OTEL_* environment
// variables. Off by default: then no SDK is set up and the gate records nothing.
type Tracing struct {
	Enabled bool `mapstructure:"enabled"`
	// Endpoint is the OTLP base URL: http://collector:4318 for HTTP (the exporter adds
	// /v1/traces), http://collector:4317 for gRPC (http:// = without TLS); "" leaves it to
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT (default
	// http://localhost:4318, or localhost:4317 for gRPC).
	Endpoint string `mapstructure:"endpoint" log:"url"`
}

// Durability configures the broker durability audit (package durability): the checks of
// `mqsidecar doctor`, run at start and every Interval by a running sidecar.
type Durability struct {
	// Require refuses to start (exit 3) when a check at start finds a risk.
	Require bool `mapstructure:"require"`
	// Interval between two background checks; 0 checks at start only.
	Interval time.Duration `mapstructure:"interval"`
}

// Source selects and configures the broker adapter. Each broker's section is declared,
// defaulted and checked in the broker's own folder (adapters/<kind>/settings.go); a field
// here, tagged with the section's name, is all it takes to make it a source.kind (brokers).
type Source struct {
	Kind     string   `mapstructure:"kind"` // kafka | rocketmq | rabbitmq
	Kafka    Kafka    `mapstructure:"kafka"`
	RocketMQ RocketMQ `mapstructure:"rocketmq"`
	RabbitMQ RabbitMQ `mapstructure:"rabbitmq"`
}

// The broker sections, declared in their adapters' folders.
type (
	// Kafka configures adapters/kafka.
	Kafka = kafka.Settings
	// KafkaSASL configures SASL authentication of adapters/kafka.
	KafkaSASL = kafka.SASL
	// RocketMQ configures adapters/rocketmq.
	RocketMQ = rocketmq.Settings
	// RabbitMQ configures adapters/rabbitmq.
	RabbitMQ = rabbitmq.Settings
	// TLS configures client TLS for a broker or Redis connection.
	TLS = settings.TLS
	// Publish configures the publish endpoint (package publish).
	Publish = publish.Settings
	// Secret is a string that never prints: fmt, slog and JSON see "<redacted>".
	Secret = settings.Secret
)

// App is the local application the sidecar pushes to.
type App struct {
	URL     string        `mapstructure:"url" log:"url"`
	Timeout time.Duration `mapstructure:"timeout"`
	// HealthURL, when set, gates consumption: nothing is fetched until it answers 2xx.
	HealthURL string `mapstructure:"health_url" log:"url"`
	// EventType is the ce-type header value.
	EventType string `mapstructure:"event_type"`
	// MaxResponseBytes bounds how much of the app's answer is read.
	MaxResponseBytes int64  `mapstructure:"max_response_bytes"`
	TLS              AppTLS `mapstructure:"tls"`
}

// AppTLS configures an https app (app.url and app.health_url).
type AppTLS struct {
	// CAFile is a PEM file of the CAs that sign the app's certificate (for example a
	// self-signed one); "" means the system's roots.
	CAFile string `mapstructure:"ca_file"`
}

// Delivery configures the ack gate.
type Delivery struct {
	Ordering    string `mapstructure:"ordering"` // partition | key | none
	MaxInflight int    `mapstructure:"max_inflight"`
	// PartitionLookahead bounds the messages of one partition (Kafka) admitted and not yet
	// settled, so a partition stuck on a failing message cannot take every in-flight slot.
	// 0 = max_inflight/2.
	PartitionLookahead   int        `mapstructure:"partition_lookahead"`
	MaxAttempts          int        `mapstructure:"max_attempts"` // 0 = unlimited
	DropAfterMaxAttempts bool       `mapstructure:"drop_after_max_attempts"`
	Backoff              Backoff    `mapstructure:"backoff"`
	DeadLetter           DeadLetter `mapstructure:"dead_letter"`
	// MaxMessageBytes refuses (dead-letters, or retries with a clear log) payloads larger
	// than this; 0 = no limit.
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	// MaxBufferBytes bounds the bytes of messages held in the sidecar (G4): half for the
	// adapter's buffers (fetching pauses by bytes), half for the gate's admission (read and
	// not yet settled). A single message larger than its half is still delivered, alone.
	MaxBufferBytes int `mapstructure:"max_buffer_bytes"`
}

// DefaultMaxBufferBytes is the default of delivery.max_buffer_bytes, 64 MiB: sized for the
// chart's 256 MiB sidecar memory limit. The heap holds up to the budget in live messages,
// and Go's collector lets it grow to about twice its live size before it collects
// (GOGC=100), so ~128 MiB; the measured fixed overhead (runtime, clients, store, pushes:
// docs/guarantees.md, G4) comes on top and still leaves room for one oversized message.
const DefaultMaxBufferBytes = 64 << 20

// BufferShares splits delivery.max_buffer_bytes between the adapter's buffers and the
// gate's admission.
func (d Delivery) BufferShares() (adapter, gate int64) {
	gate = int64(d.MaxBufferBytes) / 2
	return int64(d.MaxBufferBytes) - gate, gate
}

// Backoff is exponential backoff with full jitter between retries.
type Backoff struct {
	Initial    time.Duration `mapstructure:"initial"`
	Max        time.Duration `mapstructure:"max"`
	Multiplier float64       `mapstructure:"multiplier"`
}

// DeadLetter names where failed messages go: a Kafka/RocketMQ topic or a RabbitMQ
// exchange[/routing-key]. "" means none.
type DeadLetter struct {
	Target string `mapstructure:"target"`
}

// Dedup configures the deduplication store: the embedded bbolt file (one per replica), or
// Redis shared by every replica of a fleet.
type Dedup struct {
	Enabled bool `mapstructure:"enabled"`
	// Store is "bbolt" (embedded, the default) or "redis" (shared by a fleet).
	Store string        `mapstructure:"store"`
	Path  string        `mapstructure:"path"` // bbolt only
	TTL   time.Duration `mapstructure:"ttl"`
	// MaxEntries bounds the number of recorded IDs; the oldest are forgotten first.
	// Default dedup.DefaultMaxEntries (4 million, about 660 MB at most: see its doc);
	// 0 = bounded by TTL only. bbolt only.
	MaxEntries int        `mapstructure:"max_entries"`
	Redis      DedupRedis `mapstructure:"redis"`
}

// DedupRedis configures the shared store (dedup.store: redis, package dedup/redisstore).
type DedupRedis struct {
	// Addrs: one server, the nodes of a cluster, or the Sentinels when MasterName is set.
	Addrs []string `mapstructure:"addrs" log:"addrs"`
	// MasterName selects Sentinel: the name of the monitored master.
	MasterName string `mapstructure:"master_name"`
	Username   string `mapstructure:"username"`
	Password   Secret `mapstructure:"password"`
	// PasswordFile is read at load time and overrides Password.
	PasswordFile string `mapstructure:"password_file"`
	DB           int    `mapstructure:"db"`
	TLS          TLS    `mapstructure:"tls"`
	// WaitReplicas > 0 waits for that many replicas (WAIT) before a record counts as
	// durable; 0 requires the server to run with appendonly yes and appendfsync always.
	WaitReplicas int `mapstructure:"wait_replicas"`
	// Lease is how long a replica's in-flight record stays its own without renewal (it is
	// renewed every lease/3), so another replica takes a message over once its replica died.
	Lease time.Duration `mapstructure:"lease"`
	// KeyPrefix starts every key; "" derives it from the source (DedupKeyPrefix), so two
	// services sharing one Redis never collide.
	KeyPrefix string `mapstructure:"key_prefix"`
	// Timeout bounds one round trip to Redis.
	Timeout time.Duration `mapstructure:"timeout"`
}

// Admin is the /healthz /readyz /metrics listener.
type Admin struct {
	Listen string `mapstructure:"listen"`
}

// Log configures log/slog.
type Log struct {
	Level  string `mapstructure:"level"`  // debug | info | warn | error
	Format string `mapstructure:"format"` // json | text
}

// Defaults returns the configuration used for every key not set elsewhere (the values docs/guarantees.md and example.yaml name).
func Defaults() Config {
	return Config{
		Source: Source{
			Kind:     "kafka",
			Kafka:    kafka.Defaults(),
			RocketMQ: rocketmq.Defaults(),
			RabbitMQ: rabbitmq.Defaults(),
		},
		App: App{
			Timeout:          10 * time.Second,
			EventType:        "mqsidecar.message",
			MaxResponseBytes: 1 << 20,
		},
		Delivery: Delivery{
			Ordering:    "partition",
			MaxInflight: 64,
			// Fits the chart's sidecar memory limit (DefaultMaxBufferBytes).
			MaxBufferBytes: DefaultMaxBufferBytes,
			Backoff:        Backoff{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2},
		},
		Dedup: Dedup{
			Enabled: true,
			Store:   "bbolt",
			Path:    "./data/dedup.db",
			TTL:     168 * time.Hour,
			// A bound by default, so the default volume never fills (dedup.DefaultMaxEntries).
			MaxEntries: dedup.DefaultMaxEntries,
			Redis:      DedupRedis{Lease: 30 * time.Second, Timeout: 5 * time.Second},
		},
		Admin:           Admin{Listen: "127.0.0.1:9464"},
		ShutdownTimeout: 30 * time.Second,
		Log:             Log{Level: "info", Format: "json"},
		Durability:      Durability{Interval: 5 * time.Minute},
		Publish:         publish.Defaults(),
	}
}

// DedupKeyPrefix returns the key prefix of the shared dedup store: dedup.redis.key_prefix,
// or one derived from the source so that every consumer group (queue) has its own keys:
// "mqsidecar:kafka:<group>:", "mqsidecar:rocketmq:<namespace>%<group>:" (namespace when set),
// "mqsidecar:rabbitmq:<vhost>:<queue>:" (each broker's settings.Broker.DedupKeyPrefix).
func (c Config) DedupKeyPrefix() string {
	if p := c.Dedup.Redis.KeyPrefix; p != "" {
		return p
	}
	if b := c.Source.broker(); b != nil {
		return b.DedupKeyPrefix()
	}
	return "mqsidecar:" + c.Source.Kind + ":"
}

// Kinds returns the broker kinds, the names of Source's sections in declaration order.
func Kinds() []string {
	var out []string
	t := reflect.TypeFor[Source]()
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("mapstructure"); t.Field(i).Type.Kind() == reflect.Struct && tag != "" {
			out = append(out, tag)
		}
	}
	return out
}

// broker returns the section source.kind selects, nil for an unknown kind.
func (s *Source) broker() settings.Broker {
	if f := s.section(); f.IsValid() {
		return f.Interface().(settings.Broker)
	}
	return nil
}

// section returns the addressable field of Source that source.kind names.
func (s *Source) section() reflect.Value {
	v := reflect.ValueOf(s).Elem()
	t := v.Type()
	for i := range t.NumField() {
		if t.Field(i).Type.Kind() == reflect.Struct && s.Kind != "" && t.Field(i).Tag.Get("mapstructure") == s.Kind {
			return v.Field(i)
		}
	}
	return reflect.Value{}
}
