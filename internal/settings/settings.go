// Package settings holds the building blocks that every section of the configuration
// shares, so that a broker's settings (adapters/kafka, adapters/rabbitmq, adapters/rocketmq)
// can be declared, defaulted and validated in the broker's own folder without importing
// package config: the Secret type, the TLS block, and the Checker that collects problems
// keyed by their dotted configuration key. Package config composes the sections into the
// file's shape and is the only package that reads files and the environment.
package settings

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
)

// EnvPrefix starts every environment variable that overrides a configuration key.
const EnvPrefix = "MQSIDECAR_"

// EnvVar returns the environment variable that overrides key: EnvPrefix followed by the key
// upper-cased with "." replaced by "_" ("log.level" → "MQSIDECAR_LOG_LEVEL").
func EnvVar(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
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

// SecretFile names a *_file key whose content, when the path is set, replaces the inline
// secret Dst (package config reads it at load time).
type SecretFile struct {
	Key  string // the dotted key of the file setting, e.g. "source.kafka.sasl.password_file"
	Path string
	Dst  *Secret
}

// Problem is one thing wrong with a configuration: the dotted key (or, for an unknown
// environment variable, its name) and what is wrong with it. Message never contains a secret.
type Problem struct {
	Key     string
	Message string
}

// Checker collects problems.
type Checker struct{ Problems []Problem }

// Add records a problem of key.
func (c *Checker) Add(key, format string, args ...any) {
	c.Problems = append(c.Problems, Problem{Key: key, Message: fmt.Sprintf(format, args...)})
}

// Err returns the problems as one error for a caller outside package config (an adapter's
// constructor given settings that did not pass through config.Load), or nil when there are
// none: "<component>: invalid configuration: <key>: <message>; ...".
func (c *Checker) Err(component string) error {
	if len(c.Problems) == 0 {
		return nil
	}
	errs := make([]error, len(c.Problems))
	for i, p := range c.Problems {
		errs[i] = errors.New(p.Key + ": " + p.Message)
	}
	return fmt.Errorf("%s: invalid configuration: %w", component, errors.Join(errs...))
}

// OneOf checks that val is one of allowed.
func (c *Checker) OneOf(key, val string, allowed ...string) {
	if slices.Contains(allowed, val) {
		return
	}
	if val == "" {
		c.Add(key, "required: one of %s", strings.Join(allowed, " | "))
		return
	}
	c.Add(key, "must be one of %s, got %q", strings.Join(allowed, " | "), val)
}

// Required checks that val is not blank.
func (c *Checker) Required(key, val string) {
	if strings.TrimSpace(val) == "" {
		c.Add(key, "required")
	}
}

// HostPorts checks a non-empty list of host:port addresses. credHint names where
// credentials belong instead ("" when the address has none). An entry is shown redacted
// (RedactURL): one written as user:password@host:port or as a URL must not print its
// password.
func (c *Checker) HostPorts(key string, addrs []string, credHint string) {
	if len(addrs) == 0 {
		c.Add(key, "required: at least one host:port")
		return
	}
	for i, a := range addrs {
		switch {
		case strings.Contains(a, "@"):
			c.Add(key, "entry %d %q: must be host:port, without a user name or password (%s)", i+1, RedactURL(a), credHint)
		case strings.Contains(a, "/"):
			c.Add(key, "entry %d %q: must be host:port, not a URL", i+1, RedactURL(a))
		default:
			if msg := CheckHostPort(a, true); msg != "" {
				c.Add(key, "entry %d %q: %s", i+1, a, msg)
			}
		}
	}
}

// CheckHostPort returns what is wrong with a host:port address, or "".
func CheckHostPort(addr string, needHost bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "must be host:port (e.g. 127.0.0.1:9092)"
	}
	if needHost && host == "" {
		return "host is empty, must be host:port"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (needHost && n == 0) {
		return fmt.Sprintf("port %q is not a valid port number", port)
	}
	return ""
}

// MessageID checks a message_id setting: one of the fixed names, or "<prefix>:<non-empty>".
func (c *Checker) MessageID(key, val string, fixed []string, prefix string) {
	if slices.Contains(fixed, val) {
		return
	}
	if name, ok := strings.CutPrefix(val, prefix+":"); ok {
		if strings.TrimSpace(name) == "" {
			c.Add(key, "%q names no %s: write %s:<name>", val, prefix, prefix)
		}
		return
	}
	var opts []string
	for _, f := range fixed {
		if f == "" {
			f = `"" (the default)`
		}
		opts = append(opts, f)
	}
	c.Add(key, "must be one of %s | %s:<name>, got %q", strings.Join(opts, " | "), prefix, val)
}

// RedactURL returns raw with everything between "://" and the last "@" replaced by
// "xxxxx" ("amqp://xxxxx@host:5672/vhost"), safe to log. It does not parse raw, so a URL
// that does not parse, or parses differently than it reads (a "#", "?" or "/" in the
// password), is redacted just the same: nothing before the last "@" is shown beyond the
// scheme. Without "://" (user:password@host:port), everything before the last "@" is
// replaced. A string without "@" carries no user info and is returned unchanged.
func RedactURL(raw string) string {
	at := strings.LastIndexByte(raw, '@')
	if at < 0 {
		return raw
	}
	start := 0
	if i := strings.Index(raw[:at], "://"); i >= 0 {
		start = i + len("://")
	}
	return raw[:start] + "xxxxx" + raw[at:]
}

// Check checks a TLS block whose keys start with prefix. on reports whether TLS is in
// effect for the connection; offHint says how to switch it on.
func (t TLS) Check(c *Checker, prefix string, on bool, offHint string) {
	for _, f := range []struct{ key, path string }{
		{prefix + ".ca_file", t.CAFile}, {prefix + ".cert_file", t.CertFile}, {prefix + ".key_file", t.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		st, err := os.Stat(f.path)
		switch {
		case err != nil:
			c.Add(f.key, "cannot use file: %v", err)
		case st.IsDir():
			c.Add(f.key, "%q is a directory, expected a PEM file", f.path)
		}
	}
	if t.CertFile != "" && t.KeyFile == "" {
		c.Add(prefix+".key_file", "required when %s.cert_file is set (client certificate)", prefix)
	}
	if t.KeyFile != "" && t.CertFile == "" {
		c.Add(prefix+".cert_file", "required when %s.key_file is set (client certificate)", prefix)
	}
	if !on {
		var set []string
		for name, isSet := range map[string]bool{
			"ca_file": t.CAFile != "", "cert_file": t.CertFile != "", "key_file": t.KeyFile != "",
			"server_name": t.ServerName != "", "insecure_skip_verify": t.InsecureSkipVerify,
		} {
			if isSet {
				set = append(set, prefix+"."+name)
			}
		}
		if len(set) > 0 {
			slices.Sort(set)
			c.Add(prefix+".enabled", "TLS is off, but %s %s set: %s", strings.Join(set, ", "), pluralIs(len(set)), offHint)
		}
	}
}

func pluralIs(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// Broker is what package config needs of a broker's settings section (the struct under
// source.<kind>), beside its mapstructure tags. Every method but SecretFiles has a value
// receiver; SecretFiles has a pointer receiver, since it hands out pointers into the
// section.
type Broker interface {
	// Check records every problem of the section, and of delivery.dead_letter.target as
	// this broker reads it (a topic, an exchange, or nothing beside a broker-side
	// dead-letter mode).
	Check(c *Checker, deadLetterTarget string)
	// BrokerDeadLetter reports whether the broker itself takes failed messages (RabbitMQ
	// "nack" into the queue's dead-letter exchange, RocketMQ "broker" into %DLQ%).
	BrokerDeadLetter() bool
	// DeadLetterAlternative names the setting that switches BrokerDeadLetter on, for a
	// hint in a message ("source.rabbitmq.dead_letter_mode: nack"); "" when there is none.
	DeadLetterAlternative() string
	// DedupKeyPrefix is the shared dedup store's key prefix derived from the section, so
	// that every consumer group (queue) has its own keys.
	DedupKeyPrefix() string
}

// SecretFiler is implemented (with a pointer receiver) by a section that has *_file
// secrets.
type SecretFiler interface {
	SecretFiles() []SecretFile
}
