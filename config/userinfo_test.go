package config

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// ambiguousPW is the password of the example: a "#" makes net/url end the
// authority early, so amqp://orders:#Tr0ub4dor@rabbit:5672/ parses as host "orders" with
// the password in the fragment.
const ambiguousPW = "Tr0ub4dor"

// ambiguousURLs carry user info that no two parsers need agree on: a "/", "?" or "#" before
// the last "@", or several "@" in the authority. Each must be refused, and the refusal (and
// every redacted form) must not contain the password.
var ambiguousURLs = []string{
	"amqp://orders:#" + ambiguousPW + "@rabbit:5672/",
	"amqp://orders:" + ambiguousPW + "#@rabbit:5672/",
	"amqp://orders:?" + ambiguousPW + "@rabbit:5672/",
	"amqp://orders:/" + ambiguousPW + "@rabbit:5672/",
	"amqp://orders:" + ambiguousPW + "/x@rabbit:5672/orders",
	"amqps://orders:a?" + ambiguousPW + "@rabbit/vh",
	"amqp://orders:" + ambiguousPW + "@x@rabbit:5672/",
	"amqp://orders@" + ambiguousPW + "@rabbit:5672/",
}

func TestAmbiguousAMQPUserinfoRejected(t *testing.T) {
	// An "@" after the host is ambiguous too (is the vhost "vh@x", or is "rabbit:5672/vh"
	// a user name?); here the "password" is what follows it.
	for _, u := range append(ambiguousURLs, "amqp://rabbit:5672/vh@"+ambiguousPW) {
		c := validRabbitMQ()
		c.Source.RabbitMQ.URL = Secret(u)
		err := c.Validate()
		name := strings.ReplaceAll(u, ambiguousPW, "PW")
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		wantProblem(t, err, "source.rabbitmq.url", "percent-encode", "%23")
		if strings.Contains(err.Error(), ambiguousPW) {
			t.Errorf("%s: the password is in the error:\n%v", name, err)
		}
	}
	// Percent-encoded, the same credentials are fine.
	c := validRabbitMQ()
	c.Source.RabbitMQ.URL = "amqp://orders:%23" + ambiguousPW + "%40x@rabbit:5672/orders%2Feu"
	if err := c.Validate(); err != nil {
		t.Errorf("percent-encoded URL refused: %v", err)
	}
}

// TestRedactURLNeverShowsUserinfo: whatever the URL looks like, and whether or not it
// parses, nothing between "://" and the last "@" is shown.
func TestRedactURLNeverShowsUserinfo(t *testing.T) {
	weird := append([]string{
		"amqp://sidecar:" + ambiguousPW + "@rabbit:5672/",
		"amqp://sidecar:" + ambiguousPW + "@rabbit:port/",
		"amqp://sidecar:" + ambiguousPW + "%zz@rabbit:5672/",
		"amqp://sidecar:" + ambiguousPW + "\x7f@rabbit:5672/",
		"amqp://sidecar:" + ambiguousPW + " @ra bbit/",
		"amqp:/sidecar:" + ambiguousPW + "@rabbit/",
		"sidecar:" + ambiguousPW + "@rabbit:5672",
		"http://app:" + ambiguousPW + "@127.0.0.1:8080/in",
		"://" + ambiguousPW + "@",
		ambiguousPW + "@",
		"redis://:" + ambiguousPW + "@redis:6379",
	}, ambiguousURLs...)
	for _, u := range weird {
		got := RedactURL(u)
		if strings.Contains(got, ambiguousPW) {
			t.Errorf("RedactURL(%q) = %q shows the password", strings.ReplaceAll(u, ambiguousPW, "PW"), got)
		}
	}
	for in, want := range map[string]string{
		"amqp://orders:#Tr0ub4dor@rabbit:5672/": "amqp://xxxxx@rabbit:5672/",
		"amqp://u:p@h:5672/v":                   "amqp://xxxxx@h:5672/v",
		"amqp://h:5672/v":                       "amqp://h:5672/v",
		"u:p@h:5672":                            "xxxxx@h:5672",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}

	// The configuration summary goes through the same redaction, also for values that
	// validation would refuse.
	for _, u := range ambiguousURLs {
		c := validRabbitMQ()
		c.Source.RabbitMQ.URL = Secret(u)
		c.App.URL = strings.Replace(u, "amqp", "http", 1)
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("loaded", "config", c)
		if strings.Contains(buf.String(), ambiguousPW) {
			t.Errorf("config summary shows the password:\n%s", buf.String())
		}
	}
}

// TestAddressesWithCredentials: a broker or Redis address that carries a user name and
// password is refused without echoing the password, and the summary hides it.
func TestAddressesWithCredentials(t *testing.T) {
	for _, tc := range []struct {
		key string
		set func(*Config, string)
	}{
		{"source.kafka.brokers", func(c *Config, a string) { c.Source.Kafka.Brokers = []string{a} }},
		{"dedup.redis.addrs", func(c *Config, a string) {
			c.Dedup.Store = "redis"
			c.Dedup.Redis.Addrs = []string{a}
		}},
	} {
		for _, a := range []string{"user:" + ambiguousPW + "@broker:9092", "redis://:" + ambiguousPW + "@broker:6379", "u:" + ambiguousPW + "@:9092"} {
			c := validKafka()
			tc.set(&c, a)
			err := c.Validate()
			wantProblem(t, err, tc.key, "host:port")
			if strings.Contains(err.Error(), ambiguousPW) {
				t.Errorf("%s %q: password in the error:\n%v", tc.key, strings.ReplaceAll(a, ambiguousPW, "PW"), err)
			}
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("loaded", "config", c)
			if strings.Contains(buf.String(), ambiguousPW) {
				t.Errorf("%s: password in the summary:\n%s", tc.key, buf.String())
			}
		}
	}
	// Errors of plain addresses still show the address.
	c := validKafka()
	c.Source.Kafka.Brokers = []string{"broker"}
	wantProblem(t, c.Validate(), "source.kafka.brokers", fmt.Sprintf("%q", "broker"))
}
