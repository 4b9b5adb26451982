// Package config is the only package that knows about files, environment variables and
// flags. It decodes them once (viper), validates the result, and hands plain structs to the
// rest of the program; ackgate, dedup and the adapters never import viper.
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
	"log/slog"
	"net/url"
	"time"
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
}

// Durability configures the broker durability audit (package durability): the checks of
// `mqsidecar doctor`, run at start and every Interval by a running sidecar.
type Durability struct {
	// Require refuses to start (exit 3) when a check at start finds a risk.
	Require bool `mapstructure:"require"`
	// Interval between two background checks; 0 checks at start only.
	Interval time.Duration `mapstructure:"interval"`
}

// Source selects and configures the broker adapter.
type Source struct {
	Kind     string   `mapstructure:"kind"` // kafka | rocketmq | rabbitmq
	Kafka    Kafka    `mapstructure:"kafka"`
	RocketMQ RocketMQ `mapstructure:"rocketmq"`
	RabbitMQ RabbitMQ `mapstructure:"rabbitmq"`
}

// Kafka configures adapters/kafka.
type Kafka struct {
	Brokers []string `mapstructure:"brokers"`
	Group   string   `mapstructure:"group"`
	Topics  []string `mapstructure:"topics"`
	// MessageID is "header:<name>" or "key"; "" means coordinates topic/partition/offset.
	// When the named header or key is absent, the coordinates are used.
	MessageID   string `mapstructure:"message_id"`
	StartOffset string `mapstructure:"start_offset"` // earliest | latest
	// GroupInstanceID enables static membership (KIP-345), e.g. the pod name.
	GroupInstanceID string        `mapstructure:"group_instance_id"`
	CommitInterval  time.Duration `mapstructure:"commit_interval"`
	// SessionTimeout is how long the group waits for a silent member (a killed process)
	// before it hands that member's partitions to the others.
	SessionTimeout time.Duration `mapstructure:"session_timeout"`
	// ClientID is sent to the brokers; defaults to "mqsidecar".
	ClientID string    `mapstructure:"client_id"`
	SASL     KafkaSASL `mapstructure:"sasl"`
	TLS      TLS       `mapstructure:"tls"`
}

// KafkaSASL configures SASL authentication. Mechanism "" disables it.
type KafkaSASL struct {
	Mechanism    string `mapstructure:"mechanism"` // PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
	Username     string `mapstructure:"username"`
	Password     Secret `mapstructure:"password"`
	PasswordFile string `mapstructure:"password_file"` // read at load time, overrides Password
}

// TLS configures client TLS for a broker connection. Files named here must exist (checked
// by Validate); cert_file and key_file go together. For Kafka, the other keys require
// enabled: true (setting ca_file alone does not switch TLS on, it is an error).
type TLS struct {
	Enabled            bool   `mapstructure:"enabled"`
	CAFile             string `mapstructure:"ca_file"`
	CertFile           string `mapstructure:"cert_file"`
	KeyFile            string `mapstructure:"key_file"`
	ServerName         string `mapstructure:"server_name"`
	InsecureSkipVerify bool   `mapstructure:"insecure_skip_verify"`
}

// RocketMQ configures adapters/rocketmq.
type RocketMQ struct {
	Nameservers []string `mapstructure:"nameservers"`
	Group       string   `mapstructure:"group"`
	Topic       string   `mapstructure:"topic"`
	Tags        string   `mapstructure:"tags"`
	// MessageID is "uniq_key", "keys" or "property:<name>".
	MessageID string `mapstructure:"message_id"`
	Mode      string `mapstructure:"mode"` // concurrent | orderly
	// DeadLetterMode "topic" publishes to delivery.dead_letter.target; "broker" lets the
	// broker move the message to its %DLQ% topic for the group.
	DeadLetterMode string `mapstructure:"dead_letter_mode"`
	Namespace      string `mapstructure:"namespace"`
	AccessKey      string `mapstructure:"access_key"`
	SecretKey      Secret `mapstructure:"secret_key"`
	SecretKeyFile  string `mapstructure:"secret_key_file"`
	// SuspendTime is how long an orderly queue pauses before a retry.
	SuspendTime time.Duration `mapstructure:"suspend_time"`
	// InstanceName is the client instance name, part of the client ID the broker knows the
	// consumer by. Set it to something stable per instance (the pod name) so that a
	// restarted sidecar is the same client and, in orderly mode, takes its queue locks back
	// at once instead of waiting for them to expire (60 s). "" = unique per process.
	InstanceName string `mapstructure:"instance_name"`
}

// RabbitMQ configures adapters/rabbitmq.
type RabbitMQ struct {
	// URL is the AMQP URL; it may carry a password, so it is a Secret.
	URL      Secret `mapstructure:"url"`
	URLFile  string `mapstructure:"url_file"` // read at load time, overrides URL
	Queue    string `mapstructure:"queue"`
	Prefetch int    `mapstructure:"prefetch"`
	// MessageID is "message_id" (the AMQP property) or "header:<name>".
	MessageID string `mapstructure:"message_id"`
	// Declare declares the queue (durable) when true; by default the queue is only checked
	// passively and a missing queue is a clear error.
	Declare bool `mapstructure:"declare"`
	// DeadLetterMode "publish" publishes to delivery.dead_letter.target with confirms;
	// "nack" rejects without requeue into the queue's own dead-letter exchange.
	DeadLetterMode string `mapstructure:"dead_letter_mode"`
	// TLS refines the TLS of an amqps:// URL. The AMQP client uses TLS exactly when the URL
	// scheme is amqps, so TLS options next to an amqp:// URL are a validation error.
	TLS TLS `mapstructure:"tls"`
	// ManagementURL is the management HTTP API ("http://127.0.0.1:15672"), read by the
	// durability checks for what AMQP cannot tell (queue durability, type, policies);
	// "" = those are reported unknown. The user and password default to the AMQP URL's.
	ManagementURL          string `mapstructure:"management_url"`
	ManagementUsername     string `mapstructure:"management_username"`
	ManagementPassword     Secret `mapstructure:"management_password"`
	ManagementPasswordFile string `mapstructure:"management_password_file"` // overrides ManagementPassword
}

// App is the local application the sidecar pushes to.
type App struct {
	URL     string        `mapstructure:"url"`
	Timeout time.Duration `mapstructure:"timeout"`
	// HealthURL, when set, gates consumption: nothing is fetched until it answers 2xx.
	HealthURL string `mapstructure:"health_url"`
	// EventType is the ce-type header value.
	EventType string `mapstructure:"event_type"`
	// MaxResponseBytes bounds how much of the app's answer is read.
	MaxResponseBytes int64 `mapstructure:"max_response_bytes"`
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
	// 0 = bounded by TTL only. bbolt only.
	MaxEntries int        `mapstructure:"max_entries"`
	Redis      DedupRedis `mapstructure:"redis"`
}

// DedupRedis configures the shared store (dedup.store: redis, package dedup/redisstore).
type DedupRedis struct {
	// Addrs: one server, the nodes of a cluster, or the Sentinels when MasterName is set.
	Addrs []string `mapstructure:"addrs"`
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

// Secret is a string that never prints: fmt, slog and JSON see "<redacted>".
type Secret string

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "<redacted>"
}

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText implements encoding.TextMarshaler, so JSON and YAML output redact.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Reveal returns the secret value, for the one place that must use it.
func (s Secret) Reveal() string { return string(s) }

// Defaults returns the configuration used for every key not set elsewhere (the values docs/guarantees.md and example.yaml name).
func Defaults() Config {
	return Config{
		Source: Source{
			Kind: "kafka",
			Kafka: Kafka{
				StartOffset:    "earliest",
				CommitInterval: time.Second,
				SessionTimeout: 45 * time.Second,
				ClientID:       "mqsidecar",
			},
			RocketMQ: RocketMQ{
				Tags:           "*",
				MessageID:      "uniq_key",
				Mode:           "concurrent",
				SuspendTime:    time.Second,
				DeadLetterMode: "topic",
			},
			RabbitMQ: RabbitMQ{
				Prefetch:       64,
				MessageID:      "message_id",
				DeadLetterMode: "publish",
			},
		},
		App: App{
			Timeout:          10 * time.Second,
			EventType:        "mqsidecar.message",
			MaxResponseBytes: 1 << 20,
		},
		Delivery: Delivery{
			Ordering:    "partition",
			MaxInflight: 64,
			Backoff:     Backoff{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2},
		},
		Dedup: Dedup{
			Enabled: true,
			Store:   "bbolt",
			Path:    "./data/dedup.db",
			TTL:     168 * time.Hour,
			Redis:   DedupRedis{Lease: 30 * time.Second, Timeout: 5 * time.Second},
		},
		Admin:           Admin{Listen: "127.0.0.1:9464"},
		ShutdownTimeout: 30 * time.Second,
		Log:             Log{Level: "info", Format: "json"},
		Durability:      Durability{Interval: 5 * time.Minute},
	}
}

// DedupKeyPrefix returns the key prefix of the shared dedup store: dedup.redis.key_prefix,
// or one derived from the source so that every consumer group (queue) has its own keys:
// "mqsidecar:kafka:<group>:", "mqsidecar:rocketmq:<namespace>%<group>:" (namespace when set),
// "mqsidecar:rabbitmq:<vhost>:<queue>:".
func (c Config) DedupKeyPrefix() string {
	if p := c.Dedup.Redis.KeyPrefix; p != "" {
		return p
	}
	switch c.Source.Kind {
	case "kafka":
		return "mqsidecar:kafka:" + c.Source.Kafka.Group + ":"
	case "rocketmq":
		g := c.Source.RocketMQ.Group
		if ns := c.Source.RocketMQ.Namespace; ns != "" {
			g = ns + "%" + g
		}
		return "mqsidecar:rocketmq:" + g + ":"
	case "rabbitmq":
		vhost := "/"
		if u, err := url.Parse(c.Source.RabbitMQ.URL.Reveal()); err == nil && len(u.Path) > 1 {
			vhost, _ = url.PathUnescape(u.Path[1:])
		}
		return "mqsidecar:rabbitmq:" + vhost + ":" + c.Source.RabbitMQ.Queue + ":"
	}
	return "mqsidecar:" + c.Source.Kind + ":"
}
