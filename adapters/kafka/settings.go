package kafka

import (
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Settings configures the Kafka source: the section source.kafka of the configuration
// (docs/guarantees.md, "Configuration"). Package config composes it into the file's shape,
// reads it from the file and the environment, and validates it with Check.
type Settings struct {
	// Mode is "group" (a consumer group: partitions are assigned to members, offsets
	// committed) or "share" (a share group, KIP-932: records are handed to any member and
	// acknowledged one by one; needs Kafka 4.2 and delivery.ordering: none).
	Mode    string   `mapstructure:"mode"`
	Brokers []string `mapstructure:"brokers" log:"addrs"`
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
	ClientID string       `mapstructure:"client_id"`
	SASL     SASL         `mapstructure:"sasl"`
	TLS      settings.TLS `mapstructure:"tls"`
}

// SASL configures SASL authentication. Mechanism "" disables it.
type SASL struct {
	Mechanism    string          `mapstructure:"mechanism"` // PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
	Username     string          `mapstructure:"username"`
	Password     settings.Secret `mapstructure:"password"`
	PasswordFile string          `mapstructure:"password_file"` // read at load time, overrides Password
}

// The values of Settings.Mode.
const (
	ModeGroup = "group"
	ModeShare = "share"
)

// Defaults returns the settings used for every key not set elsewhere.
func Defaults() Settings {
	return Settings{
		Mode:           ModeGroup,
		StartOffset:    "earliest",
		CommitInterval: time.Second,
		SessionTimeout: 45 * time.Second,
		ClientID:       "mqsidecar",
	}
}

// Check implements settings.Broker: every rule of the section, and the dead-letter
// target, which must be a valid topic name.
func (k Settings) Check(ck *settings.Checker, deadLetterTarget string) {
	if k.Mode != "" { // "" is group
		ck.OneOf("source.kafka.mode", k.Mode, ModeGroup, ModeShare)
	}
	if k.Mode == ModeShare && k.GroupInstanceID != "" {
		ck.Add("source.kafka.group_instance_id", "static membership does not apply to share groups (source.kafka.mode: share); remove it")
	}
	ck.HostPorts("source.kafka.brokers", k.Brokers, "credentials go in source.kafka.sasl")
	ck.Required("source.kafka.group", k.Group)
	if len(k.Topics) == 0 {
		ck.Add("source.kafka.topics", "required: at least one topic")
	}
	for i, t := range k.Topics {
		if !validTopic(t) {
			ck.Add("source.kafka.topics", "entry %d %q is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)", i+1, t)
		}
	}
	ck.MessageID("source.kafka.message_id", k.MessageID, []string{"", "key"}, "header")
	ck.OneOf("source.kafka.start_offset", k.StartOffset, "earliest", "latest")
	if k.CommitInterval <= 0 {
		ck.Add("source.kafka.commit_interval", "must be greater than 0, got %s", k.CommitInterval)
	}
	// The brokers' defaults for group.min/max.session.timeout.ms.
	if k.SessionTimeout < 6*time.Second || k.SessionTimeout > 30*time.Minute {
		ck.Add("source.kafka.session_timeout", "must be between 6s and 30m (the brokers' group.min/max.session.timeout.ms defaults), got %s", k.SessionTimeout)
	}
	s := k.SASL
	if s.Mechanism == "" {
		if s.Username != "" || s.Password != "" || s.PasswordFile != "" {
			ck.Add("source.kafka.sasl.mechanism", "required when sasl.username or sasl.password is set: one of PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512")
		}
	} else {
		ck.OneOf("source.kafka.sasl.mechanism", s.Mechanism, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
		if s.Username == "" {
			ck.Add("source.kafka.sasl.username", "required when sasl.mechanism is set")
		}
		if s.Password == "" {
			ck.Add("source.kafka.sasl.password", "required when sasl.mechanism is set (or set source.kafka.sasl.password_file, or %s)", settings.EnvVar("source.kafka.sasl.password"))
		}
	}
	k.TLS.Check(ck, "source.kafka.tls", k.TLS.Enabled, "set source.kafka.tls.enabled: true, or remove the TLS options")
	if t := deadLetterTarget; t != "" && !validTopic(t) {
		ck.Add("delivery.dead_letter.target", "%q is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)", t)
	}
}

// BrokerDeadLetter implements settings.Broker: Kafka has no broker-side dead-lettering.
func (Settings) BrokerDeadLetter() bool { return false }

// DeadLetterAlternative implements settings.Broker.
func (Settings) DeadLetterAlternative() string { return "" }

// DedupKeyPrefix implements settings.Broker: "mqsidecar:kafka:<group>:".
func (k Settings) DedupKeyPrefix() string { return "mqsidecar:kafka:" + k.Group + ":" }

// SecretFiles implements settings.SecretFiler.
func (k *Settings) SecretFiles() []settings.SecretFile {
	return []settings.SecretFile{{Key: "source.kafka.sasl.password_file", Path: k.SASL.PasswordFile, Dst: &k.SASL.Password}}
}

// validTopic reports whether name is a legal Kafka topic name.
func validTopic(name string) bool {
	if name == "" || len(name) > 249 || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}
