package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func validRedis() Config {
	c := validKafka()
	c.Dedup.Store = "redis"
	c.Dedup.Redis.Addrs = []string{"127.0.0.1:16379"}
	return c
}

// The shared store from the environment alone, as a fleet's pod spec sets it.
func TestDedupRedisFromEnvironment(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, addrs string
		want        []string
	}{
		{"comma", "127.0.0.1:16379,127.0.0.1:16380", []string{"127.0.0.1:16379", "127.0.0.1:16380"}},
		{"space", "127.0.0.1:16379 127.0.0.1:16380", []string{"127.0.0.1:16379", "127.0.0.1:16380"}},
		{"mixed", " 127.0.0.1:16379,\t127.0.0.1:16380 ,", []string{"127.0.0.1:16379", "127.0.0.1:16380"}},
		{"one", "127.0.0.1:16379", []string{"127.0.0.1:16379"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("MQSIDECAR_DEDUP_STORE", "redis")
			t.Setenv("MQSIDECAR_DEDUP_REDIS_ADDRS", tt.addrs)
			t.Setenv("MQSIDECAR_DEDUP_REDIS_PASSWORD", "env-pw")
			t.Setenv("MQSIDECAR_DEDUP_REDIS_MASTER_NAME", "mymaster")
			t.Setenv("MQSIDECAR_DEDUP_REDIS_WAIT_REPLICAS", "1")
			t.Setenv("MQSIDECAR_DEDUP_REDIS_LEASE", "1m")
			c, err := Load(writeConfig(t, minimalKafka), nil)
			if err != nil {
				t.Fatal(err)
			}
			r := c.Dedup.Redis
			if c.Dedup.Store != "redis" || !reflect.DeepEqual(r.Addrs, tt.want) || r.Password.Reveal() != "env-pw" ||
				r.MasterName != "mymaster" || r.WaitReplicas != 1 || r.Lease != time.Minute || r.Timeout != 5*time.Second {
				t.Fatalf("dedup = %+v, addrs %q", c.Dedup, r.Addrs)
			}
		})
	}
	t.Run("password_file", func(t *testing.T) {
		t.Setenv("MQSIDECAR_DEDUP_STORE", "redis")
		t.Setenv("MQSIDECAR_DEDUP_REDIS_ADDRS", "127.0.0.1:16379")
		t.Setenv("MQSIDECAR_DEDUP_REDIS_PASSWORD", "env-pw")
		t.Setenv("MQSIDECAR_DEDUP_REDIS_PASSWORD_FILE", pw)
		c, err := Load(writeConfig(t, minimalKafka), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Dedup.Redis.Password.Reveal(); got != "from-file" {
			t.Fatalf("password = %q, want the file's", got)
		}
	})
	t.Run("unreadable password_file", func(t *testing.T) {
		t.Setenv("MQSIDECAR_DEDUP_STORE", "redis")
		t.Setenv("MQSIDECAR_DEDUP_REDIS_ADDRS", "127.0.0.1:16379")
		t.Setenv("MQSIDECAR_DEDUP_REDIS_USERNAME", "u")
		t.Setenv("MQSIDECAR_DEDUP_REDIS_PASSWORD_FILE", pw+".missing")
		_, err := Load(writeConfig(t, minimalKafka), nil)
		wantProblem(t, err, "dedup.redis.password_file", "cannot read secret file")
		if keys := problemKeys(t, err); len(keys) != 1 {
			t.Errorf("the missing password is a consequence of the file; want one problem:\n%v", err)
		}
	})
	t.Run("bbolt does not read it", func(t *testing.T) {
		t.Setenv("MQSIDECAR_DEDUP_REDIS_PASSWORD_FILE", pw+".missing")
		if _, err := Load(writeConfig(t, minimalKafka), nil); err != nil {
			t.Fatalf("dedup.store bbolt must not read the Redis password file: %v", err)
		}
	})
	t.Run("near miss", func(t *testing.T) {
		t.Setenv("MQSIDECAR_DEDUP_REDIS_ADRS", "127.0.0.1:16379")
		_, err := Load(writeConfig(t, minimalKafka), nil)
		wantProblem(t, err, "MQSIDECAR_DEDUP_REDIS_ADRS", "did you mean MQSIDECAR_DEDUP_REDIS_ADDRS?")
	})
	t.Run("near miss in the file", func(t *testing.T) {
		_, err := Load(writeConfig(t, minimalKafka+"dedup:\n  store: redis\n  redis:\n    adrs: [127.0.0.1:16379]\n"), nil)
		wantProblem(t, err, "dedup.redis.adrs", "did you mean dedup.redis.addrs?")
	})
}

func TestDedupRedisValidation(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(*Config)
		key    string
		want   string
	}{
		{"no addrs", func(c *Config) { c.Dedup.Redis.Addrs = nil }, "dedup.redis.addrs", "required when dedup.store is redis"},
		{"bad addr", func(c *Config) { c.Dedup.Redis.Addrs = []string{"redis"} }, "dedup.redis.addrs", "host:port"},
		{"store", func(c *Config) { c.Dedup.Store = "reddis" }, "dedup.store", "bbolt | redis"},
		{"max_entries", func(c *Config) { c.Dedup.MaxEntries = 1000 }, "dedup.max_entries", "bbolt store only"},
		{"db negative", func(c *Config) { c.Dedup.Redis.DB = -1 }, "dedup.redis.db", "0 or more"},
		{"db in a cluster", func(c *Config) { c.Dedup.Redis.DB = 2; c.Dedup.Redis.Addrs = []string{"a:1", "b:2"} }, "dedup.redis.db", "database 0 only"},
		{"username without password", func(c *Config) { c.Dedup.Redis.Username = "u" }, "dedup.redis.password", "MQSIDECAR_DEDUP_REDIS_PASSWORD"},
		{"wait_replicas", func(c *Config) { c.Dedup.Redis.WaitReplicas = -1 }, "dedup.redis.wait_replicas", "got -1"},
		{"timeout", func(c *Config) { c.Dedup.Redis.Timeout = 0 }, "dedup.redis.timeout", "greater than 0"},
		{"lease tiny", func(c *Config) { c.Dedup.Redis.Lease = 100 * time.Millisecond }, "dedup.redis.lease", "at least 1s"},
		{"lease vs timeout", func(c *Config) { c.Dedup.Redis.Lease = 8 * time.Second }, "dedup.redis.lease", "twice dedup.redis.timeout (5s)"},
		{"key_prefix braces", func(c *Config) { c.Dedup.Redis.KeyPrefix = "a{b}:" }, "dedup.redis.key_prefix", "hash tag"},
		{"tls off", func(c *Config) { c.Dedup.Redis.TLS.ServerName = "r" }, "dedup.redis.tls.enabled", "dedup.redis.tls.server_name"},
		{"tls file", func(c *Config) { c.Dedup.Redis.TLS = TLS{Enabled: true, CAFile: "/nonexistent/ca.pem"} }, "dedup.redis.tls.ca_file", "cannot use file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := validRedis()
			tt.mutate(&c)
			err := c.Validate()
			wantProblem(t, err, tt.key, tt.want)
			if keys := problemKeys(t, err); len(keys) != 1 {
				t.Errorf("want exactly one problem, got:\n%v", err)
			}
		})
	}
	for name, c := range map[string]Config{
		"redis": validRedis(),
		"sentinel with db": func() Config {
			c := validRedis()
			c.Dedup.Redis.Addrs = []string{"a:1", "b:2"}
			c.Dedup.Redis.MasterName = "m"
			c.Dedup.Redis.DB = 3
			return c
		}(),
		"redis keys ignored": func() Config { c := validKafka(); c.Dedup.Redis.Lease = -1; return c }(),
		"disabled":           func() Config { c := validRedis(); c.Dedup.Enabled = false; c.Dedup.Redis.Addrs = nil; return c }(),
		"lease 2x timeout":   func() Config { c := validRedis(); c.Dedup.Redis.Lease = 10 * time.Second; return c }(),
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestDedupKeyPrefix(t *testing.T) {
	k, r, q := validKafka(), validRocketMQ(), validRabbitMQ()
	k.Source.Kafka.Group = "orders"
	r.Source.RocketMQ.Group, r.Source.RocketMQ.Namespace = "pay", "prod"
	q.Source.RabbitMQ.URL, q.Source.RabbitMQ.Queue = "amqp://u:pw@rabbit:5672/shop%2Feu", "orders"
	q2 := validRabbitMQ()
	custom := validKafka()
	custom.Dedup.Redis.KeyPrefix = "svc:"
	for _, tt := range []struct {
		c    Config
		want string
	}{
		{k, "mqsidecar:kafka:orders:"},
		{r, "mqsidecar:rocketmq:prod%pay:"},
		{q, "mqsidecar:rabbitmq:shop/eu:orders:"},
		{q2, "mqsidecar:rabbitmq:/:orders:"},
		{custom, "svc:"},
	} {
		if got := tt.c.DedupKeyPrefix(); got != tt.want {
			t.Errorf("%s: DedupKeyPrefix = %q, want %q", tt.c.Source.Kind, got, tt.want)
		}
		if strings.Contains(tt.c.DedupKeyPrefix(), "pw") {
			t.Errorf("key prefix carries the password")
		}
	}
}
