package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func validKafka() Config {
	c := Defaults()
	c.Source.Kind = "kafka"
	c.Source.Kafka.Brokers = []string{"127.0.0.1:9092"}
	c.Source.Kafka.Group = "g"
	c.Source.Kafka.Topics = []string{"orders"}
	c.App.URL = "http://127.0.0.1:8080/in"
	return c
}

func validRocketMQ() Config {
	c := Defaults()
	c.Source.Kind = "rocketmq"
	c.Source.RocketMQ.Nameservers = []string{"127.0.0.1:9876"}
	c.Source.RocketMQ.Group = "g"
	c.Source.RocketMQ.Topic = "orders"
	c.App.URL = "http://127.0.0.1:8080/in"
	return c
}

func validRabbitMQ() Config {
	c := Defaults()
	c.Source.Kind = "rabbitmq"
	c.Source.RabbitMQ.URL = "amqp://guest:guest@127.0.0.1:5672/"
	c.Source.RabbitMQ.Queue = "orders"
	c.App.URL = "http://127.0.0.1:8080/in"
	return c
}

func TestValidBases(t *testing.T) {
	for name, c := range map[string]Config{"kafka": validKafka(), "rocketmq": validRocketMQ(), "rabbitmq": validRabbitMQ()} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s base: %v", name, err)
		}
	}
	// Validate returns a nil interface, not a typed nil pointer.
	if err := validKafka().Validate(); err != nil {
		t.Fatal("typed nil")
	}
}

// TestValidationRules: each bad input yields a problem on the expected key, and only there.
func TestValidationRules(t *testing.T) {
	dir := t.TempDir()
	ca := writeTestCA(t, dir)
	pem := filepath.Join(dir, "x.pem")
	if err := os.WriteFile(pem, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	type rule struct {
		name   string
		base   func() Config
		mutate func(c *Config)
		key    string
		want   string // substring of the message
	}
	k, rmq, rmqp := validKafka, validRocketMQ, validRabbitMQ
	tests := []rule{
		// source.kind
		{"kind unknown", k, func(c *Config) { c.Source.Kind = "nats" }, "source.kind", `must be one of kafka | rocketmq | rabbitmq, got "nats"`},
		{"kind empty", k, func(c *Config) { c.Source.Kind = "" }, "source.kind", "required"},
		{"kind case", k, func(c *Config) { c.Source.Kind = "Kafka" }, "source.kind", "must be one of"},

		// kafka
		{"kafka brokers empty", k, func(c *Config) { c.Source.Kafka.Brokers = nil }, "source.kafka.brokers", "at least one host:port"},
		{"kafka broker no port", k, func(c *Config) { c.Source.Kafka.Brokers = []string{"a:1", "kafka"} }, "source.kafka.brokers", `entry 2 "kafka": must be host:port`},
		{"kafka broker bad port", k, func(c *Config) { c.Source.Kafka.Brokers = []string{"a:http"} }, "source.kafka.brokers", "not a valid port"},
		{"kafka broker port range", k, func(c *Config) { c.Source.Kafka.Brokers = []string{"a:70000"} }, "source.kafka.brokers", "not a valid port"},
		{"kafka broker no host", k, func(c *Config) { c.Source.Kafka.Brokers = []string{":9092"} }, "source.kafka.brokers", "host is empty"},
		{"kafka group", k, func(c *Config) { c.Source.Kafka.Group = "" }, "source.kafka.group", "required"},
		{"kafka topics", k, func(c *Config) { c.Source.Kafka.Topics = nil }, "source.kafka.topics", "at least one topic"},
		{"kafka topic name", k, func(c *Config) { c.Source.Kafka.Topics = []string{"ok", "no spaces"} }, "source.kafka.topics", `entry 2 "no spaces"`},
		{"kafka message_id", k, func(c *Config) { c.Source.Kafka.MessageID = "offset" }, "source.kafka.message_id", `got "offset"`},
		{"kafka message_id header empty", k, func(c *Config) { c.Source.Kafka.MessageID = "header:" }, "source.kafka.message_id", "header:<name>"},
		{"kafka start_offset", k, func(c *Config) { c.Source.Kafka.StartOffset = "oldest" }, "source.kafka.start_offset", "earliest | latest"},
		{"kafka mode", k, func(c *Config) { c.Source.Kafka.Mode = "queue" }, "source.kafka.mode", "group | share"},
		{"kafka share mode needs ordering none", k, func(c *Config) { c.Source.Kafka.Mode = "share" }, "delivery.ordering", "must be none with source.kafka.mode: share"},
		{"kafka share mode no static membership", k, func(c *Config) {
			c.Source.Kafka.Mode, c.Delivery.Ordering, c.Source.Kafka.GroupInstanceID = "share", "none", "pod-0"
		}, "source.kafka.group_instance_id", "share groups"},
		{"kafka commit_interval", k, func(c *Config) { c.Source.Kafka.CommitInterval = 0 }, "source.kafka.commit_interval", "greater than 0"},
		{"kafka session_timeout too short", k, func(c *Config) { c.Source.Kafka.SessionTimeout = time.Second }, "source.kafka.session_timeout", "between 6s and 30m"},
		{"kafka sasl mechanism", k, func(c *Config) {
			c.Source.Kafka.SASL = KafkaSASL{Mechanism: "GSSAPI", Username: "u", Password: "p"}
		}, "source.kafka.sasl.mechanism", "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512"},
		{"kafka sasl username", k, func(c *Config) { c.Source.Kafka.SASL = KafkaSASL{Mechanism: "PLAIN", Password: "p"} }, "source.kafka.sasl.username", "required"},
		{"kafka sasl password", k, func(c *Config) { c.Source.Kafka.SASL = KafkaSASL{Mechanism: "SCRAM-SHA-256", Username: "u"} }, "source.kafka.sasl.password", "password_file"},
		{"kafka sasl credentials without mechanism", k, func(c *Config) { c.Source.Kafka.SASL = KafkaSASL{Username: "u", Password: "p"} }, "source.kafka.sasl.mechanism", "required when"},
		{"kafka tls ca missing", k, func(c *Config) { c.Source.Kafka.TLS = TLS{Enabled: true, CAFile: missing} }, "source.kafka.tls.ca_file", "missing.pem"},
		{"kafka tls ca is dir", k, func(c *Config) { c.Source.Kafka.TLS = TLS{Enabled: true, CAFile: dir} }, "source.kafka.tls.ca_file", "is a directory"},
		{"kafka tls cert missing", k, func(c *Config) { c.Source.Kafka.TLS = TLS{Enabled: true, CertFile: missing, KeyFile: pem} }, "source.kafka.tls.cert_file", "missing.pem"},
		{"kafka tls key missing", k, func(c *Config) { c.Source.Kafka.TLS = TLS{Enabled: true, CertFile: pem, KeyFile: missing} }, "source.kafka.tls.key_file", "missing.pem"},
		{"kafka tls cert without key", k, func(c *Config) { c.Source.Kafka.TLS = TLS{Enabled: true, CertFile: pem} }, "source.kafka.tls.key_file", "required when"},
		{"kafka tls key without cert", k, func(c *Config) { c.Source.Kafka.TLS = TLS{Enabled: true, KeyFile: pem} }, "source.kafka.tls.cert_file", "required when"},
		{"kafka tls options while disabled", k, func(c *Config) { c.Source.Kafka.TLS = TLS{CAFile: pem, InsecureSkipVerify: true} }, "source.kafka.tls.enabled", "source.kafka.tls.ca_file, source.kafka.tls.insecure_skip_verify are set"},
		{"app tls ca missing", k, func(c *Config) { c.App.URL = "https://app:8443/in"; c.App.TLS.CAFile = missing }, "app.tls.ca_file", "missing.pem"},
		{"app tls ca not pem", k, func(c *Config) { c.App.URL = "https://app:8443/in"; c.App.TLS.CAFile = "validate_test.go" }, "app.tls.ca_file", "no PEM certificate"},
		{"app tls ca with http app", k, func(c *Config) { c.App.TLS.CAFile = ca }, "app.tls.ca_file", "neither app.url nor app.health_url is https://"},
		{"kafka dead-letter topic name", k, func(c *Config) { c.Delivery.DeadLetter.Target = "orders/dlq" }, "delivery.dead_letter.target", "not a valid Kafka topic"},

		// rocketmq
		{"rocketmq nameservers empty", rmq, func(c *Config) { c.Source.RocketMQ.Nameservers = nil }, "source.rocketmq.nameservers", "at least one"},
		{"rocketmq nameserver bad", rmq, func(c *Config) { c.Source.RocketMQ.Nameservers = []string{"ns"} }, "source.rocketmq.nameservers", "host:port"},
		{"rocketmq group", rmq, func(c *Config) { c.Source.RocketMQ.Group = " " }, "source.rocketmq.group", "required"},
		{"rocketmq topic", rmq, func(c *Config) { c.Source.RocketMQ.Topic = "" }, "source.rocketmq.topic", "required"},
		{"rocketmq topic name", rmq, func(c *Config) { c.Source.RocketMQ.Topic = "a.b" }, "source.rocketmq.topic", "not a valid RocketMQ topic"},
		{"rocketmq message_id", rmq, func(c *Config) { c.Source.RocketMQ.MessageID = "msg_id" }, "source.rocketmq.message_id", "uniq_key | keys | property:<name>"},
		{"rocketmq message_id property empty", rmq, func(c *Config) { c.Source.RocketMQ.MessageID = "property:" }, "source.rocketmq.message_id", "property:<name>"},
		{"rocketmq mode", rmq, func(c *Config) { c.Source.RocketMQ.Mode = "ordered" }, "source.rocketmq.mode", "concurrent | orderly"},
		{"rocketmq dead_letter_mode", rmq, func(c *Config) { c.Source.RocketMQ.DeadLetterMode = "dlq" }, "source.rocketmq.dead_letter_mode", "topic | broker"},
		{"rocketmq suspend_time", rmq, func(c *Config) { c.Source.RocketMQ.SuspendTime = -time.Second }, "source.rocketmq.suspend_time", "greater than 0"},
		{"rocketmq instance_name", rmq, func(c *Config) { c.Source.RocketMQ.InstanceName = "pod 7@x" }, "source.rocketmq.instance_name", "a-z A-Z 0-9"},
		{"rocketmq secret without access", rmq, func(c *Config) { c.Source.RocketMQ.SecretKey = "sk" }, "source.rocketmq.access_key", "required when"},
		{"rocketmq access without secret", rmq, func(c *Config) { c.Source.RocketMQ.AccessKey = "ak" }, "source.rocketmq.secret_key", "secret_key_file"},
		{"rocketmq broker mode with target", rmq, func(c *Config) {
			c.Source.RocketMQ.DeadLetterMode = "broker"
			c.Delivery.DeadLetter.Target = "dlq"
		}, "delivery.dead_letter.target", "%DLQ%"},

		// rabbitmq
		{"rabbitmq url empty", rmqp, func(c *Config) { c.Source.RabbitMQ.URL = "" }, "source.rabbitmq.url", "required"},
		{"rabbitmq url scheme", rmqp, func(c *Config) { c.Source.RabbitMQ.URL = "http://guest:guest@h:5672/" }, "source.rabbitmq.url", "amqp:// or amqps://"},
		{"rabbitmq url no host", rmqp, func(c *Config) { c.Source.RabbitMQ.URL = "amqp:///vhost" }, "source.rabbitmq.url", "no host"},
		{"rabbitmq url bad port", rmqp, func(c *Config) { c.Source.RabbitMQ.URL = "amqp://h:99999/" }, "source.rabbitmq.url", "not a valid port"},
		{"rabbitmq url unparsable", rmqp, func(c *Config) { c.Source.RabbitMQ.URL = "amqp://h:port/" }, "source.rabbitmq.url", "not a valid URL"},
		{"rabbitmq management_url scheme", rmqp, func(c *Config) { c.Source.RabbitMQ.ManagementURL = "amqp://h:15672" }, "source.rabbitmq.management_url", "http:// or https://"},
		{"rabbitmq management_url credentials", rmqp, func(c *Config) { c.Source.RabbitMQ.ManagementURL = "http://u:p@h:15672" }, "source.rabbitmq.management_url", "without credentials"},
		{"tracing endpoint scheme", k, func(c *Config) { c.Tracing.Endpoint = "otel-collector:4318" }, "tracing.endpoint", "http:// or https://"},
		{"tracing endpoint no host", k, func(c *Config) { c.Tracing.Endpoint = "http:///v1/traces" }, "tracing.endpoint", "http:// or https://"},
		{"durability interval short", k, func(c *Config) { c.Durability.Interval = time.Second }, "durability.interval", "at least 10s"},
		{"rabbitmq queue", rmqp, func(c *Config) { c.Source.RabbitMQ.Queue = "" }, "source.rabbitmq.queue", "required"},
		{"rabbitmq prefetch 0", rmqp, func(c *Config) { c.Source.RabbitMQ.Prefetch = 0 }, "source.rabbitmq.prefetch", "between 1 and 65535, got 0"},
		{"rabbitmq prefetch big", rmqp, func(c *Config) { c.Source.RabbitMQ.Prefetch = 65536 }, "source.rabbitmq.prefetch", "between 1 and 65535"},
		{"rabbitmq message_id", rmqp, func(c *Config) { c.Source.RabbitMQ.MessageID = "correlation_id" }, "source.rabbitmq.message_id", "message_id | header:<name>"},
		{"rabbitmq dead_letter_mode", rmqp, func(c *Config) { c.Source.RabbitMQ.DeadLetterMode = "dlx" }, "source.rabbitmq.dead_letter_mode", "publish | nack"},
		{"rabbitmq nack with target", rmqp, func(c *Config) {
			c.Source.RabbitMQ.DeadLetterMode = "nack"
			c.Delivery.DeadLetter.Target = "dlx"
		}, "delivery.dead_letter.target", "own dead-letter exchange"},
		{"rabbitmq tls with amqp scheme", rmqp, func(c *Config) { c.Source.RabbitMQ.TLS.Enabled = true }, "source.rabbitmq.tls.enabled", "amqps://"},
		{"rabbitmq tls options with amqp scheme", rmqp, func(c *Config) { c.Source.RabbitMQ.TLS.ServerName = "r" }, "source.rabbitmq.tls.enabled", "amqps://"},
		{"rabbitmq tls file missing", rmqp, func(c *Config) {
			c.Source.RabbitMQ.URL = "amqps://h/"
			c.Source.RabbitMQ.TLS.CAFile = missing
		}, "source.rabbitmq.tls.ca_file", "missing.pem"},

		// app
		{"app url empty", k, func(c *Config) { c.App.URL = "" }, "app.url", "required"},
		{"app url relative", k, func(c *Config) { c.App.URL = "/messages" }, "app.url", "absolute http:// or https://"},
		{"app url scheme", k, func(c *Config) { c.App.URL = "ftp://h/x" }, "app.url", "absolute http"},
		{"app url no host", k, func(c *Config) { c.App.URL = "http:///x" }, "app.url", "with a host"},
		{"app url host only port", k, func(c *Config) { c.App.URL = "http://:8080/x" }, "app.url", "with a host"},
		{"app url bad port", k, func(c *Config) { c.App.URL = "http://h:0/x" }, "app.url", "not a valid port"},
		{"app health_url", k, func(c *Config) { c.App.HealthURL = "localhost:8080/healthz" }, "app.health_url", "absolute http"},
		{"app timeout", k, func(c *Config) { c.App.Timeout = 0 }, "app.timeout", "greater than 0"},
		{"app event_type", k, func(c *Config) { c.App.EventType = "" }, "app.event_type", "required"},
		{"app event_type control", k, func(c *Config) { c.App.EventType = "a\nb" }, "app.event_type", "control characters"},
		{"app max_response_bytes", k, func(c *Config) { c.App.MaxResponseBytes = 0 }, "app.max_response_bytes", "greater than 0"},

		// delivery
		{"ordering", k, func(c *Config) { c.Delivery.Ordering = "strict" }, "delivery.ordering", "partition | key | none"},
		{"max_inflight 0", k, func(c *Config) { c.Delivery.MaxInflight = 0 }, "delivery.max_inflight", "between 1 and 100000, got 0"},
		{"partition_lookahead negative", k, func(c *Config) { c.Delivery.PartitionLookahead = -1 }, "delivery.partition_lookahead", "got -1"},
		{"max_inflight big", k, func(c *Config) { c.Delivery.MaxInflight = 100001 }, "delivery.max_inflight", "between 1 and 100000"},
		{"max_attempts negative", k, func(c *Config) { c.Delivery.MaxAttempts = -1 }, "delivery.max_attempts", "0 (unlimited) or more"},
		{"max_attempts without dead letter", k, func(c *Config) { c.Delivery.MaxAttempts = 3 }, "delivery.max_attempts", "delivery.drop_after_max_attempts: true"},
		{"backoff initial", k, func(c *Config) { c.Delivery.Backoff.Initial = 0 }, "delivery.backoff.initial", "greater than 0"},
		{"backoff max below initial", k, func(c *Config) { c.Delivery.Backoff.Max = 50 * time.Millisecond }, "delivery.backoff.max", "at least delivery.backoff.initial (100ms)"},
		{"backoff multiplier", k, func(c *Config) { c.Delivery.Backoff.Multiplier = 0.5 }, "delivery.backoff.multiplier", "at least 1"},
		{"max_message_bytes", k, func(c *Config) { c.Delivery.MaxMessageBytes = -1 }, "delivery.max_message_bytes", "0 (no limit) or more"},
		{"max_buffer_bytes zero", k, func(c *Config) { c.Delivery.MaxBufferBytes = 0 }, "delivery.max_buffer_bytes", "at least 1048576 (1 MiB), got 0"},
		{"max_buffer_bytes small", k, func(c *Config) { c.Delivery.MaxBufferBytes = 1<<20 - 1 }, "delivery.max_buffer_bytes", "at least 1048576 (1 MiB)"},

		// dedup, admin, lifecycle, log
		{"dedup path", k, func(c *Config) { c.Dedup.Path = "" }, "dedup.path", "required when dedup.enabled"},
		{"dedup ttl", k, func(c *Config) { c.Dedup.TTL = 0 }, "dedup.ttl", "greater than 0"},
		{"dedup max_entries", k, func(c *Config) { c.Dedup.MaxEntries = -5 }, "dedup.max_entries", "or more"},
		{"admin listen", k, func(c *Config) { c.Admin.Listen = "9464" }, "admin.listen", "host:port"},
		{"admin listen port", k, func(c *Config) { c.Admin.Listen = "127.0.0.1:metrics" }, "admin.listen", "not a valid port"},
		{"shutdown_timeout", k, func(c *Config) { c.ShutdownTimeout = 0 }, "shutdown_timeout", "greater than 0"},
		{"drain_delay", k, func(c *Config) { c.DrainDelay = -time.Second }, "drain_delay", "0 or more"},
		{"log level", k, func(c *Config) { c.Log.Level = "trace" }, "log.level", "debug | info | warn | error"},
		{"log format", k, func(c *Config) { c.Log.Format = "logfmt" }, "log.format", "json | text"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.base()
			tt.mutate(&c)
			err := c.Validate()
			wantProblem(t, err, tt.key, tt.want)
			if keys := problemKeys(t, err); len(keys) != 1 {
				t.Errorf("want exactly one problem, got:\n%v", err)
			}
		})
	}
}

// TestValidationAccepts covers the allowed edge values, so a rule cannot be tightened by
// accident.
func TestValidationAccepts(t *testing.T) {
	dir := t.TempDir()
	pem := filepath.Join(dir, "x.pem")
	if err := os.WriteFile(pem, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		base   func() Config
		mutate func(c *Config)
	}{
		{"kafka message_id key", validKafka, func(c *Config) { c.Source.Kafka.MessageID = "key" }},
		{"kafka message_id header", validKafka, func(c *Config) { c.Source.Kafka.MessageID = "header:x-id" }},
		{"kafka ipv6 broker", validKafka, func(c *Config) { c.Source.Kafka.Brokers = []string{"[::1]:9092"} }},
		{"kafka sasl", validKafka, func(c *Config) {
			c.Source.Kafka.SASL = KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: "u", Password: "p"}
		}},
		{"kafka full tls", validKafka, func(c *Config) {
			c.Source.Kafka.TLS = TLS{Enabled: true, CAFile: pem, CertFile: pem, KeyFile: pem, ServerName: "k", InsecureSkipVerify: true}
		}},
		{"kafka tls enabled alone", validKafka, func(c *Config) { c.Source.Kafka.TLS.Enabled = true }},
		{"ordering key on kafka", validKafka, func(c *Config) { c.Delivery.Ordering = "key" }},
		{"ordering none", validKafka, func(c *Config) { c.Delivery.Ordering = "none" }},
		{"max_attempts with target", validKafka, func(c *Config) { c.Delivery.MaxAttempts = 3; c.Delivery.DeadLetter.Target = "dlq" }},
		{"max_attempts with explicit drop", validKafka, func(c *Config) { c.Delivery.MaxAttempts = 3; c.Delivery.DropAfterMaxAttempts = true }},
		{"max_inflight bounds", validKafka, func(c *Config) { c.Delivery.MaxInflight = 100000 }},
		{"backoff max equals initial, multiplier 1", validKafka, func(c *Config) {
			c.Delivery.Backoff = Backoff{Initial: time.Second, Max: time.Second, Multiplier: 1}
		}},
		{"dedup disabled ignores its keys", validKafka, func(c *Config) { c.Dedup = Dedup{Enabled: false, TTL: -1, MaxEntries: -1} }},
		{"admin disabled", validKafka, func(c *Config) { c.Admin.Listen = "" }},
		{"admin all interfaces", validKafka, func(c *Config) { c.Admin.Listen = ":9464" }},
		{"admin random port", validKafka, func(c *Config) { c.Admin.Listen = "127.0.0.1:0" }},
		{"https app with health", validKafka, func(c *Config) {
			c.App.URL = "https://app.local:8443/in?x=1"
			c.App.HealthURL = "http://[::1]:8080/healthz"
		}},
		{"unselected sections are not validated", validKafka, func(c *Config) {
			c.Source.RabbitMQ = RabbitMQ{URL: "garbage", Prefetch: -1}
			c.Source.RocketMQ = RocketMQ{Mode: "bogus"}
		}},
		{"rocketmq keys / property", validRocketMQ, func(c *Config) { c.Source.RocketMQ.MessageID = "property:ORDER_ID" }},
		{"rocketmq orderly broker dlq", validRocketMQ, func(c *Config) {
			c.Source.RocketMQ.Mode = "orderly"
			c.Source.RocketMQ.DeadLetterMode = "broker"
			c.Delivery.MaxAttempts = 16
		}},
		{"rocketmq acl", validRocketMQ, func(c *Config) { c.Source.RocketMQ.AccessKey = "ak"; c.Source.RocketMQ.SecretKey = "sk" }},
		{"rabbitmq amqps with tls options", validRabbitMQ, func(c *Config) {
			c.Source.RabbitMQ.URL = "amqps://u:p%40ss@rabbit:5671/%2F"
			c.Source.RabbitMQ.TLS = TLS{CAFile: pem, ServerName: "rabbit"}
		}},
		{"rabbitmq header id, nack dlx", validRabbitMQ, func(c *Config) {
			c.Source.RabbitMQ.MessageID = "header:x-id"
			c.Source.RabbitMQ.DeadLetterMode = "nack"
			c.Delivery.MaxAttempts = 5
		}},
		{"rabbitmq publish to exchange/routing-key", validRabbitMQ, func(c *Config) { c.Delivery.DeadLetter.Target = "dlx/failed" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.base()
			tt.mutate(&c)
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestHasDeadLetter(t *testing.T) {
	tests := []struct {
		kind, target, rabbitMode, rocketMode string
		want                                 bool
	}{
		{"kafka", "", "", "", false},
		{"kafka", "dlq", "", "", true},
		{"kafka", "", "nack", "broker", false}, // other kinds' modes do not count
		{"rabbitmq", "", "publish", "", false},
		{"rabbitmq", "dlx", "publish", "", true},
		{"rabbitmq", "", "nack", "", true},
		{"rocketmq", "", "", "topic", false},
		{"rocketmq", "dlq", "", "topic", true},
		{"rocketmq", "", "", "broker", true},
	}
	for _, tt := range tests {
		c := Defaults()
		c.Source.Kind = tt.kind
		c.Delivery.DeadLetter.Target = tt.target
		c.Source.RabbitMQ.DeadLetterMode = tt.rabbitMode
		c.Source.RocketMQ.DeadLetterMode = tt.rocketMode
		if got := c.HasDeadLetter(); got != tt.want {
			t.Errorf("%+v: HasDeadLetter = %v", tt, got)
		}
	}
}

// TestMaxAttemptsRule is docs/guarantees.md's "max_attempts > 0 without a dead-letter target is a
// configuration error unless drop_after_max_attempts: true", through Load as an operator
// would hit it.
func TestMaxAttemptsRule(t *testing.T) {
	_, err := Load(writeConfig(t, minimalKafka+"delivery:\n  max_attempts: 5\n"), nil)
	wantProblem(t, err, "delivery.max_attempts", "is 5", "no dead-letter target", "delivery.dead_letter.target", "delivery.drop_after_max_attempts: true")

	c := validRabbitMQ()
	c.Delivery.MaxAttempts = 2
	wantProblem(t, c.Validate(), "delivery.max_attempts", "source.rabbitmq.dead_letter_mode: nack")
	c = validRocketMQ()
	c.Delivery.MaxAttempts = 2
	wantProblem(t, c.Validate(), "delivery.max_attempts", "source.rocketmq.dead_letter_mode: broker")

	for _, extra := range []string{"    drop_after_max_attempts: true\n", "    dead_letter: {target: orders-dlq}\n"} {
		y := minimalKafka + "delivery:\n  max_attempts: 5\n" + strings.ReplaceAll(extra, "    ", "  ")
		if _, err := Load(writeConfig(t, y), nil); err != nil {
			t.Errorf("%q: %v", extra, err)
		}
	}
	t.Setenv("MQSIDECAR_DELIVERY_DEAD_LETTER_TARGET", "orders-dlq")
	if _, err := Load(writeConfig(t, minimalKafka+"delivery:\n  max_attempts: 5\n"), nil); err != nil {
		t.Errorf("target from the environment: %v", err)
	}
}

func TestValidationErrorFormat(t *testing.T) {
	c := validKafka()
	c.Log.Level = "loud"
	c.Delivery.MaxInflight = 0
	c.App.URL = ""
	c.Source.Kafka.Brokers = []string{"x", "y"}
	err := c.Validate()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("%T", err)
	}
	want := []string{"app.url", "delivery.max_inflight", "log.level", "source.kafka.brokers", "source.kafka.brokers"}
	if got := problemKeys(t, err); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("keys %v, want sorted %v", got, want)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("want one line per problem:\n%v", err)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, "config: "+want[i]+": ") {
			t.Errorf("line %d = %q", i, l)
		}
	}
	// Problems of one key keep their order.
	if !strings.Contains(lines[3], `"x"`) || !strings.Contains(lines[4], `"y"`) {
		t.Errorf("entries out of order:\n%v", err)
	}
	// Error sorts even a hand-built, unsorted error.
	hand := &ValidationError{Problems: []Problem{{Key: "b", Message: "2"}, {Key: "a", Message: "1"}}}
	if hand.Error() != "config: a: 1\nconfig: b: 2" {
		t.Errorf("%q", hand.Error())
	}
}

// The secrets used below must never show up in any rendering of a config or an error.
const (
	kafkaPW     = "kafka-pw-9f3k"
	rocketSK    = "rocket-sk-2j8d"
	amqpPW      = "amqp-pw-7h1x"
	appPW       = "app-pw-5v0q"
	redisPW     = "redis-pw-2m8d"
	amqpURL     = "amqp://sidecar:" + amqpPW + "@rabbit.internal:5672/orders"
	secretsHint = "secret leaked"
)

func secretConfig() Config {
	c := validRabbitMQ()
	c.Source.Kafka.SASL = KafkaSASL{Mechanism: "PLAIN", Username: "u", Password: kafkaPW}
	c.Source.RocketMQ.AccessKey = "ak"
	c.Source.RocketMQ.SecretKey = rocketSK
	c.Source.RabbitMQ.URL = amqpURL
	c.App.URL = "http://app:" + appPW + "@127.0.0.1:8080/in"
	c.Dedup.Store = "redis"
	c.Dedup.Redis.Addrs = []string{"redis.internal:6379"}
	c.Dedup.Redis.Username = "sidecar"
	c.Dedup.Redis.Password = redisPW
	return c
}

// assertNoSecret checks the Secret-typed values. app.url is a plain string (credentials in
// it are unusual), so only the slog summary, which redacts URLs, is checked for appPW.
func assertNoSecret(t *testing.T, what, s string, more ...string) {
	t.Helper()
	for _, secret := range append([]string{kafkaPW, rocketSK, amqpPW, redisPW}, more...) {
		if strings.Contains(s, secret) {
			t.Errorf("%s: %s %q in:\n%s", what, secretsHint, secret, s)
		}
	}
}

func TestSecretsRedacted(t *testing.T) {
	for _, kind := range []string{"kafka", "rocketmq", "rabbitmq"} {
		c := secretConfig()
		c.Source.Kind = kind
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			assertNoSecret(t, kind+" fmt "+verb, fmt.Sprintf(verb, c))
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		assertNoSecret(t, kind+" json", string(b))

		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("loaded", "config", c)
		slog.New(slog.NewTextHandler(&buf, nil)).Info("loaded", "config", c)
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("loaded", slog.Any("config", &c))
		assertNoSecret(t, kind+" slog", buf.String(), appPW)
	}

	// The slog summary stays useful: the selected source only, URLs with only the password
	// hidden, durations readable.
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("loaded", "config", secretConfig())
	var line struct {
		Config map[string]any `json:"config"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	src := line.Config["source"].(map[string]any)
	if _, ok := src["kafka"]; ok {
		t.Errorf("unselected kafka section logged: %v", src)
	}
	rabbit := src["rabbitmq"].(map[string]any)
	if got := rabbit["url"]; got != "amqp://xxxxx@rabbit.internal:5672/orders" {
		t.Errorf("rabbitmq url logged as %v", got)
	}
	if got := line.Config["app"].(map[string]any)["timeout"]; got != "10s" {
		t.Errorf("app.timeout logged as %v", got)
	}
	if got := line.Config["app"].(map[string]any)["url"]; got != "http://xxxxx@127.0.0.1:8080/in" {
		t.Errorf("app.url logged as %v", got)
	}
}

func TestSecretsNotInErrors(t *testing.T) {
	// Broken AMQP URLs that carry a password: the error must name the key but not echo it.
	for _, u := range []string{
		"amqp://sidecar:" + amqpPW + "@rabbit:port/",      // bad port
		"amqp://sidecar:" + amqpPW + "%zz@rabbit:5672/",   // bad escape inside the password
		"amqp://sidecar:" + amqpPW + "@ra bbit:5672/",     // bad host
		"http://sidecar:" + amqpPW + "@rabbit:5672/",      // wrong scheme
		"sidecar:" + amqpPW + "@rabbit:5672",              // no scheme at all
		"amqp://sidecar:" + amqpPW + "@/vhost",            // no host
		"amqp://sidecar:" + amqpPW + "@rabbit:99999/",     // port out of range
		"amqp://sidecar:" + amqpPW + "\x7f@rabbit:5672/x", // control character
	} {
		c := validRabbitMQ()
		c.Source.RabbitMQ.URL = Secret(u)
		err := c.Validate()
		wantProblem(t, err, "source.rabbitmq.url")
		assertNoSecret(t, "validate "+fmt.Sprintf("%q", strings.ReplaceAll(u, amqpPW, "PW")), err.Error())
	}

	// The same through Load, from the environment and from a file.
	t.Run("load", func(t *testing.T) { secretsNotInLoadErrors(t) })

	// An app URL with credentials is shown redacted when invalid.
	c := validKafka()
	c.App.URL = "ftp://u:" + appPW + "@h/x"
	err := c.Validate()
	wantProblem(t, err, "app.url", "ftp://xxxxx@h/x")
	assertNoSecret(t, "app url", err.Error(), appPW)
}

func secretsNotInLoadErrors(t *testing.T) {
	// A secret of the wrong YAML type is not echoed.
	p := writeConfig(t, `
source:
  kind: kafka
  kafka:
    brokers: [127.0.0.1:9092]
    group: g
    topics: [t]
    sasl: {mechanism: PLAIN, username: u, password: 918273645}
app: {url: "http://127.0.0.1:1/"}
`)
	_, err := Load(p, nil)
	wantProblem(t, err, "source.kafka.sasl.password", "expected a string, got a number")
	if strings.Contains(err.Error(), "918273645") {
		t.Errorf("numeric password echoed: %v", err)
	}

	t.Setenv("MQSIDECAR_SOURCE_KIND", "rabbitmq")
	t.Setenv("MQSIDECAR_SOURCE_RABBITMQ_QUEUE", "q")
	t.Setenv("MQSIDECAR_APP_URL", "http://127.0.0.1:1/")
	t.Setenv("MQSIDECAR_SOURCE_RABBITMQ_URL", "amqp://sidecar:"+amqpPW+"@rabbit:port/")
	_, err = Load("", nil)
	wantProblem(t, err, "source.rabbitmq.url")
	assertNoSecret(t, "load env", err.Error())

	f := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(f, []byte("amqp://sidecar:"+amqpPW+"@rabbit:port/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load("", map[string]string{"source.rabbitmq.url_file": f})
	wantProblem(t, err, "source.rabbitmq.url")
	assertNoSecret(t, "load url_file", err.Error())

}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@h:5672/v": "amqp://xxxxx@h:5672/v",
		"amqp://guest@h/":             "amqp://xxxxx@h/",
		"http://127.0.0.1:8080/in":    "http://127.0.0.1:8080/in",
		"amqp://u:p@h:port/":          "amqp://xxxxx@h:port/",
		"":                            "",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
