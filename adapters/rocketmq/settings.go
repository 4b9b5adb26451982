package rocketmq

import (
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Settings configures the RocketMQ source: the section source.rocketmq of the configuration
// (docs/guarantees.md, "Configuration"). Package config composes it into the file's shape,
// reads it from the file and the environment, and validates it with Check.
type Settings struct {
	Nameservers []string `mapstructure:"nameservers" log:"addrs"`
	Group       string   `mapstructure:"group"`
	Topic       string   `mapstructure:"topic"`
	Tags        string   `mapstructure:"tags"`
	// MessageID is "uniq_key", "keys" or "property:<name>".
	MessageID string `mapstructure:"message_id"`
	Mode      string `mapstructure:"mode"` // concurrent | orderly
	// DeadLetterMode "topic" publishes to delivery.dead_letter.target; "broker" lets the
	// broker move the message to its %DLQ% topic for the group.
	DeadLetterMode string          `mapstructure:"dead_letter_mode"`
	Namespace      string          `mapstructure:"namespace"`
	AccessKey      string          `mapstructure:"access_key"`
	SecretKey      settings.Secret `mapstructure:"secret_key"`
	SecretKeyFile  string          `mapstructure:"secret_key_file"`
	// SuspendTime is how long an orderly queue pauses before a retry.
	SuspendTime time.Duration `mapstructure:"suspend_time"`
	// InstanceName is the client instance name, part of the client ID the broker knows the
	// consumer by. Set it to something stable per instance (the pod name) so that a
	// restarted sidecar is the same client and, in orderly mode, takes its queue locks back
	// at once instead of waiting for them to expire (60 s). "" = unique per process.
	InstanceName string `mapstructure:"instance_name"`
	// PublishGroup is the producer group of the publisher (publish endpoint); "" =
	// "<group>-mqsidecar-publish". Unused unless publishing is on.
	PublishGroup string `mapstructure:"publish_group"`
}

// Defaults returns the settings used for every key not set elsewhere.
func Defaults() Settings {
	return Settings{
		Tags:           "*",
		MessageID:      "uniq_key",
		Mode:           "concurrent",
		SuspendTime:    time.Second,
		DeadLetterMode: "topic",
	}
}

// Check implements settings.Broker: every rule of the section, and the dead-letter target,
// a valid topic name, which dead_letter_mode broker excludes.
func (r Settings) Check(ck *settings.Checker, deadLetterTarget string) {
	ck.HostPorts("source.rocketmq.nameservers", r.Nameservers, "credentials go in source.rocketmq.access_key and secret_key")
	ck.Required("source.rocketmq.group", r.Group)
	if r.Topic == "" {
		ck.Add("source.rocketmq.topic", "required")
	} else if !validTopic(r.Topic) {
		ck.Add("source.rocketmq.topic", "%q is not a valid RocketMQ topic name (1-127 of a-z A-Z 0-9 %% | _ -)", r.Topic)
	}
	ck.MessageID("source.rocketmq.message_id", r.MessageID, []string{"uniq_key", "keys"}, "property")
	ck.OneOf("source.rocketmq.mode", r.Mode, "concurrent", "orderly")
	ck.OneOf("source.rocketmq.dead_letter_mode", r.DeadLetterMode, "topic", "broker")
	if r.SuspendTime <= 0 {
		ck.Add("source.rocketmq.suspend_time", "must be greater than 0, got %s", r.SuspendTime)
	}
	if !validInstanceName(r.InstanceName) {
		ck.Add("source.rocketmq.instance_name", "%q: use 1-64 of a-z A-Z 0-9 . _ - (or leave it empty)", r.InstanceName)
	}
	if r.PublishGroup != "" && !validTopic(r.PublishGroup) {
		ck.Add("source.rocketmq.publish_group", "%q: use 1-127 of a-z A-Z 0-9 %% | _ - (or leave it empty)", r.PublishGroup)
	}
	if r.AccessKey != "" && r.SecretKey == "" {
		ck.Add("source.rocketmq.secret_key", "required when source.rocketmq.access_key is set (or set source.rocketmq.secret_key_file, or %s)", settings.EnvVar("source.rocketmq.secret_key"))
	}
	if r.AccessKey == "" && r.SecretKey != "" {
		ck.Add("source.rocketmq.access_key", "required when source.rocketmq.secret_key is set")
	}
	t := deadLetterTarget
	switch {
	case t != "" && r.DeadLetterMode == "broker":
		ck.Add("delivery.dead_letter.target", "is set, but source.rocketmq.dead_letter_mode is broker, which sends failed messages to the group's %%DLQ%% topic; remove the target or set dead_letter_mode: topic")
	case t != "" && !validTopic(t):
		ck.Add("delivery.dead_letter.target", "%q is not a valid RocketMQ topic name (1-127 of a-z A-Z 0-9 %% | _ -)", t)
	}
}

// BrokerDeadLetter implements settings.Broker: dead_letter_mode broker.
func (r Settings) BrokerDeadLetter() bool { return r.DeadLetterMode == "broker" }

// DeadLetterAlternative implements settings.Broker.
func (Settings) DeadLetterAlternative() string { return "source.rocketmq.dead_letter_mode: broker" }

// DedupKeyPrefix implements settings.Broker: "mqsidecar:rocketmq:<namespace>%<group>:"
// (namespace when set).
func (r Settings) DedupKeyPrefix() string {
	g := r.Group
	if r.Namespace != "" {
		g = r.Namespace + "%" + g
	}
	return "mqsidecar:rocketmq:" + g + ":"
}

// SecretFiles implements settings.SecretFiler.
func (r *Settings) SecretFiles() []settings.SecretFile {
	return []settings.SecretFile{{Key: "source.rocketmq.secret_key_file", Path: r.SecretKeyFile, Dst: &r.SecretKey}}
}

// validTopic reports whether name is a legal RocketMQ topic name.
func validTopic(name string) bool {
	if name == "" || len(name) > 127 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '%' || r == '|' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// validInstanceName accepts "" (unset) or 1-64 of a-z A-Z 0-9 . _ -: the client ID is
// "<ip>@<instance name>", so separators and spaces would make it ambiguous.
func validInstanceName(name string) bool {
	if len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}
