package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/viper"
)

// TestMain removes MQSIDECAR_* variables inherited from the caller's shell (except the e2e
// broker addresses), so a developer's environment cannot change what these tests load.
func TestMain(m *testing.M) {
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix) && !strings.HasPrefix(name, EnvPrefix+"E2E_") {
			os.Unsetenv(name)
		}
	}
	os.Exit(m.Run())
}

// writeConfig writes a YAML file into a fresh temporary directory and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mqsidecar.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The smallest valid file, in two parts: a test that needs its own source (or app) section
// writes it and takes the other part, since YAML rejects a repeated key.
const (
	kafkaSource = `
source:
  kind: kafka
  kafka:
    brokers: [127.0.0.1:9092]
    group: g
    topics: [t]
`
	appSection = `
app:
  url: http://127.0.0.1:8080/in
`
	minimalKafka = kafkaSource + appSection
)

// problemKeys returns the keys of a *ValidationError, failing the test for any other error.
func problemKeys(t *testing.T, err error) []string {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %T: %v", err, err)
	}
	var keys []string
	for _, p := range ve.Problems {
		keys = append(keys, p.Key)
	}
	return keys
}

// wantProblem fails unless err contains a line "config: <key>: ..." containing every substring.
func wantProblem(t *testing.T, err error, key string, substrings ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error for %s, got none", key)
	}
	for line := range strings.SplitSeq(err.Error(), "\n") {
		if !strings.HasPrefix(line, "config: "+key+": ") {
			continue
		}
		ok := true
		for _, s := range substrings {
			if !strings.Contains(line, s) {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	t.Fatalf("want a line %q containing %q; got:\n%v", "config: "+key+": ...", substrings, err)
}

func TestKeys(t *testing.T) {
	keys := Keys()
	if len(keys) < 60 {
		t.Fatalf("Keys() returned %d keys, expected every leaf of Config (60+): %v", len(keys), keys)
	}
	seenEnv := map[string]string{}
	for _, k := range keys {
		if k != strings.ToLower(k) || strings.Contains(k, " ") {
			t.Errorf("key %q is not a lower-case dotted key", k)
		}
		env := EnvVar(k)
		if other, dup := seenEnv[env]; dup {
			t.Errorf("keys %q and %q share the environment variable %s", k, other, env)
		}
		seenEnv[env] = k
	}
	for _, want := range []string{
		"source.kind", "source.kafka.brokers", "source.kafka.sasl.password_file", "source.kafka.tls.ca_file",
		"source.rocketmq.suspend_time", "source.rabbitmq.url", "source.rabbitmq.tls.insecure_skip_verify",
		"app.url", "delivery.backoff.multiplier", "delivery.dead_letter.target", "dedup.max_entries",
		"admin.listen", "shutdown_timeout", "drain_delay", "log.format",
	} {
		if !slices.Contains(keys, want) {
			t.Errorf("Keys() lacks %q", want)
		}
	}
	for _, notLeaf := range []string{"source", "source.kafka", "delivery.backoff"} {
		if slices.Contains(keys, notLeaf) {
			t.Errorf("Keys() contains the section %q; only leaves are keys", notLeaf)
		}
	}
	if got := EnvVar("source.kafka.sasl.password"); got != "MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD" {
		t.Errorf("EnvVar = %q", got)
	}
}

// fileKeys returns every leaf key a YAML file sets (viper flattens nested mappings).
func fileKeys(t *testing.T, path string) []string {
	t.Helper()
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		t.Fatal(err)
	}
	return v.AllKeys()
}

// TestExampleYAML keeps config/example.yaml, which the README links to, loadable, complete and
// honest about the defaults.
func TestExampleYAML(t *testing.T) {
	cfg, err := Load("example.yaml", nil)
	if err != nil {
		t.Fatalf("example.yaml does not load:\n%v", err)
	}
	if cfg.Source.Kind != "kafka" {
		t.Errorf("example.yaml: source.kind = %q, want kafka", cfg.Source.Kind)
	}
	inFile := fileKeys(t, "example.yaml")
	for _, k := range Keys() {
		if !slices.Contains(inFile, k) {
			t.Errorf("example.yaml does not show the key %s", k)
		}
	}
	// Every value shown is the default, except the required ones the example must fill in.
	filled := map[string]bool{"source.kafka.brokers": true, "source.kafka.group": true, "source.kafka.topics": true, "app.url": true}
	def := reflect.ValueOf(Defaults())
	got := reflect.ValueOf(cfg)
	for _, f := range getSchema().leaves {
		if filled[f.key] {
			continue
		}
		d, g := def.FieldByIndex(f.index), got.FieldByIndex(f.index)
		if f.typ.Kind() == reflect.Slice && d.Len() == 0 && g.Len() == 0 {
			continue
		}
		if !reflect.DeepEqual(d.Interface(), g.Interface()) {
			t.Errorf("example.yaml: %s = %v, but the default is %v", f.key, g.Interface(), d.Interface())
		}
	}
}

// TestFullYAML loads testdata/full.yaml, which sets every key to a non-default value, and
// checks each one landed in its field.
func TestFullYAML(t *testing.T) {
	const path = "testdata/full.yaml"
	inFile := fileKeys(t, path)
	for _, k := range Keys() {
		if !slices.Contains(inFile, k) {
			t.Errorf("%s does not set the key %s", path, k)
		}
	}
	got, err := Load(path, nil)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	tlsFiles := TLS{
		Enabled: true, CAFile: "testdata/tls/ca.pem", CertFile: "testdata/tls/client.pem",
		KeyFile: "testdata/tls/client-key.pem", InsecureSkipVerify: true,
	}
	kafkaTLS, rabbitTLS, redisTLS := tlsFiles, tlsFiles, tlsFiles
	kafkaTLS.ServerName, rabbitTLS.ServerName, redisTLS.ServerName = "kafka.internal", "rabbit.internal", "redis.internal"
	want := Config{
		Source: Source{
			Kind: "kafka",
			Kafka: Kafka{
				Mode: "group", Brokers: []string{"kafka-1.internal:9092", "kafka-2.internal:9093"}, Group: "orders-sidecar",
				Topics: []string{"orders", "payments"}, MessageID: "header:message-id", StartOffset: "latest",
				GroupInstanceID: "pod-0", CommitInterval: 250 * time.Millisecond, SessionTimeout: 12 * time.Second, ClientID: "sidecar-test",
				SASL: KafkaSASL{
					Mechanism: "SCRAM-SHA-512", Username: "sidecar",
					Password:     "s3cr3t-kafka-pw", // from password_file, trailing newline removed
					PasswordFile: "testdata/secrets/kafka-password",
				},
				TLS: kafkaTLS,
			},
			RocketMQ: RocketMQ{
				Nameservers: []string{"ns-1.internal:9876", "ns-2.internal:9876"}, Group: "rmq-group",
				Topic: "rmq-topic", Tags: "TagA || TagB", MessageID: "property:order-id", Mode: "orderly",
				DeadLetterMode: "broker", Namespace: "ns", AccessKey: "ak",
				SecretKey:     "inline-rocketmq-secret", // not the selected kind: its file is not read
				SecretKeyFile: "testdata/secrets/rocketmq-secret-key", SuspendTime: 3 * time.Second,
				InstanceName: "orders-pod-7", PublishGroup: "orders-publishers",
			},
			RabbitMQ: RabbitMQ{
				URL: "amqp://guest:inline-amqp-pw@127.0.0.1:5672/", URLFile: "testdata/secrets/rabbitmq-url",
				Queue: "rmq-queue", Prefetch: 128, MessageID: "header:x-id", Declare: true,
				DeadLetterMode: "nack", TLS: rabbitTLS, PublishChannels: 32,
				ManagementURL: "http://127.0.0.1:15672", ManagementUsername: "monitor",
				ManagementPassword:     "inline-mgmt-pw", // not the selected kind: its file is not read
				ManagementPasswordFile: "testdata/secrets/rabbitmq-mgmt-password",
			},
		},
		App: App{
			URL: "http://127.0.0.1:3000/in", Timeout: 2 * time.Second, HealthURL: "http://127.0.0.1:3000/healthz",
			EventType: "com.example.order", MaxResponseBytes: 4096,
		},
		Delivery: Delivery{
			Ordering: "key", MaxInflight: 256, PartitionLookahead: 32, MaxAttempts: 5, DropAfterMaxAttempts: true,
			Backoff:    Backoff{Initial: 50 * time.Millisecond, Max: 5 * time.Second, Multiplier: 1.5},
			DeadLetter: DeadLetter{Target: "orders.dlq"}, MaxMessageBytes: 1000000, MaxBufferBytes: 32 << 20,
		},
		Dedup: Dedup{Enabled: false, Store: "redis", Path: "/var/lib/mqsidecar/dedup.db", TTL: 24 * time.Hour, MaxEntries: 1000000,
			Redis: DedupRedis{
				Addrs: []string{"redis-1.internal:6379", "redis-2.internal:6379"}, MasterName: "orders-master",
				Username:     "sidecar",
				Password:     "inline-redis-pw", // dedup disabled: its file is not read
				PasswordFile: "testdata/secrets/redis-password", DB: 3, TLS: redisTLS,
				WaitReplicas: 2, Lease: 45 * time.Second, KeyPrefix: "orders:dedup:", Timeout: 2 * time.Second,
			},
		},
		Admin:           Admin{Listen: "0.0.0.0:9000"},
		ShutdownTimeout: 45 * time.Second,
		DrainDelay:      5 * time.Second,
		Log:             Log{Level: "debug", Format: "text"},
		Durability:      Durability{Require: true, Interval: time.Minute},
		Tracing:         Tracing{Enabled: true, Endpoint: "http://otel-collector:4318"},
		Publish:         Publish{Listen: "127.0.0.1:3500", MaxMessageBytes: 65536, Timeout: 3 * time.Second},
	}
	want.Publish.Transactions.CheckURL = "http://127.0.0.1:8080/tx-check"
	want.Publish.Transactions.Timeout, want.Publish.Transactions.MaxBackoff = 30*time.Second, 2*time.Minute
	if !reflect.DeepEqual(got, want) {
		// Compare per key, so the failure names the key (and reveals test secrets only).
		gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
		for _, f := range getSchema().leaves {
			g, w := gv.FieldByIndex(f.index).Interface(), wv.FieldByIndex(f.index).Interface()
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%s = %#v, want %#v", f.key, g, w)
			}
		}
	}
	if got.Validate() != nil {
		t.Errorf("Validate() of a loaded config: %v", got.Validate())
	}

	// The other kinds' sections of the same file are valid too, once selected; and their
	// secret files are read then.
	rmq, err := Load(path, map[string]string{"source.kind": "rocketmq", "delivery.dead_letter.target": ""})
	if err != nil {
		t.Fatalf("full.yaml as rocketmq: %v", err)
	}
	if got := rmq.Source.RocketMQ.SecretKey.Reveal(); got != "s3cr3t-rocketmq-sk" {
		t.Errorf("rocketmq secret_key from file = %q, want CRLF trimmed", got)
	}
	rabbit, err := Load(path, map[string]string{"source.kind": "rabbitmq", "delivery.dead_letter.target": ""})
	if err != nil {
		t.Fatalf("full.yaml as rabbitmq: %v", err)
	}
	if got := rabbit.Source.RabbitMQ.URL.Reveal(); got != "amqps://sidecar:s3cr3t-amqp-pw@rabbit.internal:5671/orders" {
		t.Errorf("rabbitmq url from file = %q", got)
	}
}

func TestKindExamples(t *testing.T) {
	tests := []struct {
		path  string
		check func(t *testing.T, c Config)
	}{
		{"testdata/kafka.yaml", func(t *testing.T, c Config) {
			if c.Source.Kind != "kafka" || c.Source.Kafka.MessageID != "header:message-id" || c.Source.Kafka.StartOffset != "earliest" {
				t.Errorf("kafka: %+v", c.Source)
			}
			if c.HasDeadLetter() {
				t.Error("kafka example has no dead letter")
			}
		}},
		{"testdata/rocketmq.yaml", func(t *testing.T, c Config) {
			r := c.Source.RocketMQ
			if c.Source.Kind != "rocketmq" || r.Mode != "orderly" || r.Tags != "*" || r.MessageID != "uniq_key" {
				t.Errorf("rocketmq: %+v", r)
			}
			if !c.HasDeadLetter() || c.Delivery.MaxAttempts != 16 {
				t.Error("rocketmq example: broker dead-lettering after 16 attempts expected")
			}
		}},
		{"testdata/rabbitmq.yaml", func(t *testing.T, c Config) {
			r := c.Source.RabbitMQ
			if c.Source.Kind != "rabbitmq" || r.Queue != "orders" || r.Prefetch != 32 || r.URL.Reveal() != "amqp://guest:guest@127.0.0.1:5672/" {
				t.Errorf("rabbitmq: queue=%q prefetch=%d", r.Queue, r.Prefetch)
			}
			if c.Delivery.DeadLetter.Target != "orders.dlx/failed" || !c.HasDeadLetter() {
				t.Error("rabbitmq example dead-letters to orders.dlx/failed")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			c, err := Load(tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	t.Run("missing file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nope.yaml")
		_, err := Load(p, nil)
		if err == nil || !strings.Contains(err.Error(), p) || !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("want a not-exist error naming %s, got %v", p, err)
		}
	})
	t.Run("invalid YAML", func(t *testing.T) {
		const p = "testdata/bad/invalid.yaml"
		_, err := Load(p, nil)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line 3") {
			t.Fatalf("want an error naming %s and line 3, got %v", p, err)
		}
	})
	t.Run("not a mapping", func(t *testing.T) {
		p := writeConfig(t, "- just\n- a list\n")
		_, err := Load(p, nil)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line 1") {
			t.Fatalf("want an error naming the file and line 1, got %v", err)
		}
	})
	t.Run("empty file is defaults", func(t *testing.T) {
		_, err := Load(writeConfig(t, "# nothing\n"), nil)
		// Defaults alone are not enough (brokers, group, topics, app.url are required).
		if keys := problemKeys(t, err); !slices.Equal(keys, []string{"app.url", "source.kafka.brokers", "source.kafka.group", "source.kafka.topics"}) {
			t.Fatalf("problems = %v", keys)
		}
	})
}

func TestNoFileEnvironmentOnly(t *testing.T) {
	t.Setenv("MQSIDECAR_SOURCE_KIND", "rabbitmq")
	t.Setenv("MQSIDECAR_SOURCE_RABBITMQ_URL", "amqps://u:p@rabbit:5671/v")
	t.Setenv("MQSIDECAR_SOURCE_RABBITMQ_QUEUE", "q")
	t.Setenv("MQSIDECAR_APP_URL", "http://127.0.0.1:3000/in")
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Source.Kind != "rabbitmq" || c.Source.RabbitMQ.Queue != "q" || c.App.URL != "http://127.0.0.1:3000/in" {
		t.Fatalf("env-only config not applied: %+v", c)
	}
	if c.Delivery.MaxInflight != 64 || c.Dedup.TTL != 168*time.Hour {
		t.Errorf("defaults lost: %+v", c.Delivery)
	}
}

// TestEnvOverrides sets every kind of value only in the environment (the file does not
// mention the key), and overrides file values.
func TestEnvOverrides(t *testing.T) {
	p := writeConfig(t, minimalKafka+`
delivery:
  max_inflight: 10
log:
  level: warn
`)
	env := map[string]string{
		"MQSIDECAR_SOURCE_KAFKA_BROKERS":                  "a:1, b:2,,c:3", // list, spaces and empty entries tolerated
		"MQSIDECAR_SOURCE_KAFKA_TOPICS":                   "x,y",
		"MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID":        "pod-7",
		"MQSIDECAR_SOURCE_KAFKA_COMMIT_INTERVAL":          "2s",
		"MQSIDECAR_SOURCE_KAFKA_SASL_MECHANISM":           "PLAIN",
		"MQSIDECAR_SOURCE_KAFKA_SASL_USERNAME":            "u",
		"MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD":            "env-secret",
		"MQSIDECAR_SOURCE_KAFKA_TLS_INSECURE_SKIP_VERIFY": "true",
		"MQSIDECAR_SOURCE_KAFKA_TLS_ENABLED":              "TRUE",
		"MQSIDECAR_APP_TIMEOUT":                           "1m30s",
		"MQSIDECAR_APP_MAX_RESPONSE_BYTES":                "2048",
		"MQSIDECAR_DELIVERY_MAX_INFLIGHT":                 "99", // overrides the file's 10
		"MQSIDECAR_DELIVERY_BACKOFF_MULTIPLIER":           "1.25",
		"MQSIDECAR_DELIVERY_DROP_AFTER_MAX_ATTEMPTS":      "true",
		"MQSIDECAR_DELIVERY_MAX_ATTEMPTS":                 "3",
		"MQSIDECAR_DEDUP_ENABLED":                         "false",
		"MQSIDECAR_ADMIN_LISTEN":                          "", // set but empty: disables the listener
		"MQSIDECAR_DRAIN_DELAY":                           "0",
		"MQSIDECAR_E2E_KAFKA":                             "ignored:9092", // not a config key, not rejected
		"MQSIDECAR_SOMETHING_ELSE":                        "ignored",
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	c, err := Load(p, map[string]string{"log.level": "error"}) // overrides beat env and file
	if err != nil {
		t.Fatal(err)
	}
	k := c.Source.Kafka
	checks := []struct {
		key       string
		got, want any
	}{
		{"source.kafka.brokers", k.Brokers, []string{"a:1", "b:2", "c:3"}},
		{"source.kafka.topics", k.Topics, []string{"x", "y"}},
		{"source.kafka.group", k.Group, "g"}, // from the file
		{"source.kafka.group_instance_id", k.GroupInstanceID, "pod-7"},
		{"source.kafka.commit_interval", k.CommitInterval, 2 * time.Second},
		{"source.kafka.sasl.password", k.SASL.Password.Reveal(), "env-secret"},
		{"source.kafka.tls.insecure_skip_verify", k.TLS.InsecureSkipVerify, true},
		{"source.kafka.tls.enabled", k.TLS.Enabled, true},
		{"app.timeout", c.App.Timeout, 90 * time.Second},
		{"app.max_response_bytes", c.App.MaxResponseBytes, int64(2048)},
		{"delivery.max_inflight", c.Delivery.MaxInflight, 99},
		{"delivery.backoff.multiplier", c.Delivery.Backoff.Multiplier, 1.25},
		{"delivery.drop_after_max_attempts", c.Delivery.DropAfterMaxAttempts, true},
		{"delivery.max_attempts", c.Delivery.MaxAttempts, 3},
		{"dedup.enabled", c.Dedup.Enabled, false},
		{"admin.listen", c.Admin.Listen, ""},
		{"drain_delay", c.DrainDelay, time.Duration(0)},
		{"log.level", c.Log.Level, "error"},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.key, ck.got, ck.want)
		}
	}
}

// TestEveryKeyFromEnvironment proves that each key in Keys() is bound: a wrong value set
// only in the environment is reported under that key.
func TestEveryKeyFromEnvironment(t *testing.T) {
	p := writeConfig(t, minimalKafka)
	for _, f := range getSchema().leaves {
		bad := "not-valid-here"
		switch {
		case f.typ.Kind() == reflect.String || f.typ.Kind() == reflect.Slice:
			continue // any string is a string; covered by TestEnvOverrides and validation
		case f.typ == durationType:
			bad = "10" // a bare number
		}
		t.Run(f.key, func(t *testing.T) {
			t.Setenv(f.env, bad)
			_, err := Load(p, nil)
			wantProblem(t, err, f.key, "expected")
		})
	}
}

func TestUnknownKeys(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		_, err := Load("testdata/bad/unknown-keys.yaml", nil)
		wantProblem(t, err, "sourse", "unknown key", "did you mean source?")
		wantProblem(t, err, "source.kafka.sasl.mechansim", "unknown key", "did you mean source.kafka.sasl.mechanism?")
		wantProblem(t, err, "source.kafka.tls.ca", "unknown key")
		wantProblem(t, err, "delivery.max_inflght", "unknown key", "did you mean delivery.max_inflight?")
		wantProblem(t, err, "delivery.backoff.multiplyer", "unknown key")
		if n := len(problemKeys(t, err)); n != 5 {
			t.Errorf("want exactly the 5 typos, got %d:\n%v", n, err)
		}
	})
	tests := []struct{ name, yaml, key string }{
		{"null value", "dead_leter:\n", "dead_leter"},
		{"empty mapping", "delivery:\n  dead_leter: {}\n", "delivery.dead_leter"},
		{"under a leaf-only section", "log:\n  levle: debug\n", "log.levle"},
		{"deep in rabbitmq", kafkaSource + "  rabbitmq:\n    tls:\n      insecure: true\n" + appSection, "source.rabbitmq.tls.insecure"},
		{"under an unselected kind", kafkaSource + "  rocketmq:\n    nameserver: [a:1]\n" + appSection, "source.rocketmq.nameserver"},
		{"case-insensitive match is fine, typo is not", "Delivery:\n  Max_Inflight: 5\n  Ordring: key\n", "delivery.ordring"},
		{"section given a scalar", "source:\n  kind: kafka\n  kafka: 5\n" + appSection, "source.kafka"},
		{"section given a list", "delivery:\n  backoff: [1, 2]\n", "delivery.backoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yaml := tt.yaml
			if !strings.Contains(yaml, "app:") {
				yaml = minimalKafka + yaml
			}
			_, err := Load(writeConfig(t, yaml), nil)
			wantProblem(t, err, tt.key)
			for _, k := range problemKeys(t, err) {
				if k != tt.key {
					t.Errorf("unexpected extra problem %s (a consequence, not a cause):\n%v", k, err)
				}
			}
		})
	}
	t.Run("dotted keys in the file are keys", func(t *testing.T) {
		c, err := Load(writeConfig(t, minimalKafka+"delivery.max_inflight: 7\n"), nil)
		if err != nil || c.Delivery.MaxInflight != 7 {
			t.Fatalf("max_inflight=%d err=%v", c.Delivery.MaxInflight, err)
		}
	})
	t.Run("override", func(t *testing.T) {
		_, err := Load(writeConfig(t, minimalKafka), map[string]string{"log.levle": "debug"})
		wantProblem(t, err, "log.levle", "unknown key", "log.level")
	})
}

func TestUnknownEnvironmentVariables(t *testing.T) {
	p := writeConfig(t, minimalKafka)
	for _, name := range []string{
		"MQSIDECAR_DELIVERY_MAX_INFLGHT", // typo inside a section
		"MQSIDECAR_LOG_LEVLE",
		"MQSIDECAR_SOURCE_KAFKA_BROKER",
		"MQSIDECAR_SHUTDOWN_TIMEOUT_SECONDS", // a top-level leaf with a suffix
		"MQSIDECAR_DEDUP",                    // a section itself is not a key
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, "1")
			_, err := Load(p, nil)
			wantProblem(t, err, name, "unknown environment variable")
		})
	}
	t.Run("suggestion", func(t *testing.T) {
		t.Setenv("MQSIDECAR_DELIVERY_MAX_INFLGHT", "1")
		_, err := Load(p, nil)
		wantProblem(t, err, "MQSIDECAR_DELIVERY_MAX_INFLGHT", "did you mean MQSIDECAR_DELIVERY_MAX_INFLIGHT?")
	})
	for _, name := range []string{"MQSIDECAR_E2E_KAFKA", "MQSIDECAR_E2E_RABBITMQ", "MQSIDECAR_CONFIG", "MQSIDECAR_SHUTDOWNTIMEOUT"} {
		t.Run("not ours/"+name, func(t *testing.T) {
			t.Setenv(name, "x")
			if _, err := Load(p, nil); err != nil {
				t.Fatalf("%s must be left alone: %v", name, err)
			}
		})
	}
}

func TestWrongTypes(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		_, err := Load("testdata/bad/wrong-types.yaml", nil)
		wantProblem(t, err, "source.kafka.brokers", "expected a list of strings", "the number 5")
		wantProblem(t, err, "app.timeout", "duration", "bare number 10", "ambiguous")
		wantProblem(t, err, "delivery.max_inflight", "expected an integer", `"abc"`)
		wantProblem(t, err, "delivery.drop_after_max_attempts", "expected a boolean", `"maybe"`)
		wantProblem(t, err, "delivery.backoff.multiplier", "expected a number", `"fast"`)
		wantProblem(t, err, "dedup.ttl", "duration", `"forever"`)
		wantProblem(t, err, "admin", "expected a mapping")
		// Only the causes: brokers stays empty, but "brokers: required" would be noise.
		if n := len(problemKeys(t, err)); n != 7 {
			t.Errorf("want 7 problems, got %d:\n%v", n, err)
		}
	})
	tests := []struct{ name, yaml, key, want string }{
		{"string given a list", "log:\n  level: [info]\n", "log.level", "expected a string, got a list"},
		{"string given a number", "dedup:\n  path: 5\n", "dedup.path", "quote it"},
		{"string given a mapping", kafkaSource + "app:\n  url: {a: 1}\n", "app.url", "got a mapping"},
		{"list entry not a string", "source:\n  kafka:\n    brokers: [a:1]\n    group: g\n    topics: [a, 5]\n" + appSection, "source.kafka.topics", "entry 2 is the number 5"},
		{"int given a float", "delivery:\n  max_inflight: 1.5\n", "delivery.max_inflight", "expected an integer"},
		{"int given a bool", "delivery:\n  max_attempts: true\n", "delivery.max_attempts", "expected an integer"},
		{"int overflow", kafkaSource + "  rabbitmq:\n    prefetch: 99999999999999999999\n" + appSection, "source.rabbitmq.prefetch", ""},
		{"bool given yes", "dedup:\n  enabled: yes\n", "dedup.enabled", "expected a boolean"},
		{"duration given a float", "shutdown_timeout: 1.5\n", "shutdown_timeout", "bare number"},
		{"duration given a quoted number", "shutdown_timeout: \"30\"\n", "shutdown_timeout", "a bare number is ambiguous"},
		{"duration given garbage", "drain_delay: soon\n", "drain_delay", `"soon"`},
		{"kind not a string", "source:\n  kind: [kafka]\n" + appSection, "source.kind", "expected a string"},
		{"float given a list", "delivery:\n  backoff:\n    multiplier: [2]\n", "delivery.backoff.multiplier", "expected a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yaml := tt.yaml
			if !strings.Contains(yaml, "app:") {
				yaml = minimalKafka + yaml
			}
			_, err := Load(writeConfig(t, yaml), nil)
			wantProblem(t, err, tt.key, tt.want)
		})
	}
	t.Run("zero duration needs no unit", func(t *testing.T) {
		c, err := Load(writeConfig(t, minimalKafka+"drain_delay: 0\n"), nil)
		if err != nil || c.DrainDelay != 0 {
			t.Fatalf("drain_delay: 0 → %v, %v", c.DrainDelay, err)
		}
	})
	t.Run("quoted numbers are fine for numeric keys", func(t *testing.T) {
		c, err := Load(writeConfig(t, minimalKafka+"delivery:\n  max_inflight: \"12\"\n  backoff:\n    multiplier: \"3\"\n"), nil)
		if err != nil || c.Delivery.MaxInflight != 12 || c.Delivery.Backoff.Multiplier != 3 {
			t.Fatalf("got %d %v, %v", c.Delivery.MaxInflight, c.Delivery.Backoff.Multiplier, err)
		}
	})
	t.Run("null means unset", func(t *testing.T) {
		c, err := Load(writeConfig(t, kafkaSource+"  rocketmq:\n"+appSection+"delivery:\n  max_inflight:\n"), nil)
		if err != nil || c.Delivery.MaxInflight != 64 {
			t.Fatalf("got %d, %v", c.Delivery.MaxInflight, err)
		}
	})
	t.Run("environment", func(t *testing.T) {
		t.Setenv("MQSIDECAR_DELIVERY_MAX_INFLIGHT", "lots")
		t.Setenv("MQSIDECAR_APP_TIMEOUT", "10")
		_, err := Load(writeConfig(t, minimalKafka), nil)
		wantProblem(t, err, "delivery.max_inflight", "expected an integer", `"lots"`)
		wantProblem(t, err, "app.timeout", "a bare number is ambiguous")
	})
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("from-file\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := `
source:
  kind: kafka
  kafka:
    brokers: [127.0.0.1:9092]
    group: g
    topics: [t]
    sasl:
      mechanism: PLAIN
      username: u
      password: inline
      password_file: %s
app:
  url: http://127.0.0.1:8080/in
`
	t.Run("overrides inline, newline trimmed", func(t *testing.T) {
		c, err := Load(writeConfig(t, strings.Replace(base, "%s", pw, 1)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Source.Kafka.SASL.Password.Reveal(); got != "from-file" {
			t.Fatalf("password = %q", got)
		}
	})
	t.Run("file named in the environment only", func(t *testing.T) {
		t.Setenv("MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD_FILE", pw)
		c, err := Load(writeConfig(t, strings.Replace(base, "password_file: %s", "password_file: \"\"", 1)), nil)
		if err != nil || c.Source.Kafka.SASL.Password.Reveal() != "from-file" {
			t.Fatalf("password from env-named file: err=%v", err)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		missing := filepath.Join(dir, "missing")
		_, err := Load(writeConfig(t, strings.Replace(base, "%s", missing, 1)), nil)
		wantProblem(t, err, "source.kafka.sasl.password_file", "cannot read secret file", missing)
		if n := len(problemKeys(t, err)); n != 1 {
			t.Errorf("want only the file problem:\n%v", err)
		}
	})
	t.Run("unreadable rabbitmq url_file", func(t *testing.T) {
		_, err := Load("testdata/rabbitmq.yaml", map[string]string{"source.rabbitmq.url_file": filepath.Join(dir, "nope"), "source.rabbitmq.url": ""})
		wantProblem(t, err, "source.rabbitmq.url_file", "cannot read secret file")
		if n := len(problemKeys(t, err)); n != 1 {
			t.Errorf("a missing url is a consequence of the unreadable file; want one problem:\n%v", err)
		}
	})
	t.Run("rabbitmq management_password_file", func(t *testing.T) {
		pw := filepath.Join(dir, "mgmt")
		if err := os.WriteFile(pw, []byte("mgmt-from-file\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load("testdata/rabbitmq.yaml", map[string]string{"source.rabbitmq.management_password_file": pw, "source.rabbitmq.management_password": "inline"})
		if err != nil || c.Source.RabbitMQ.ManagementPassword.Reveal() != "mgmt-from-file" {
			t.Fatalf("management password from its file: %v", err)
		}
	})
	t.Run("unselected kind is not read", func(t *testing.T) {
		p := writeConfig(t, `
source:
  kind: kafka
  kafka: {brokers: [127.0.0.1:9092], group: g, topics: [t]}
  rocketmq: {secret_key_file: /nonexistent/sk}
  rabbitmq: {url_file: /nonexistent/url}
app: {url: "http://127.0.0.1:8080/in"}
`)
		if _, err := Load(p, nil); err != nil {
			t.Fatalf("secret files of unselected kinds must not be read: %v", err)
		}
	})
}
