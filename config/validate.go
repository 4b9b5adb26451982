package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Problem is one thing wrong with a configuration: the dotted key (or, for an unknown
// environment variable, its name) and what is wrong with it. Message never contains a secret.
type Problem struct {
	Key     string
	Message string
}

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
	switch {
	case c.Delivery.DeadLetter.Target != "":
		return true
	case c.Source.Kind == "rabbitmq" && c.Source.RabbitMQ.DeadLetterMode == "nack":
		return true
	case c.Source.Kind == "rocketmq" && c.Source.RocketMQ.DeadLetterMode == "broker":
		return true
	}
	return false
}

// checker collects problems.
type checker struct{ ps []Problem }

func (c *checker) add(key, format string, args ...any) {
	c.ps = append(c.ps, Problem{Key: key, Message: fmt.Sprintf(format, args...)})
}

// oneOf checks that val is one of allowed.
func (c *checker) oneOf(key, val string, allowed ...string) {
	if slices.Contains(allowed, val) {
		return
	}
	if val == "" {
		c.add(key, "required: one of %s", strings.Join(allowed, " | "))
		return
	}
	c.add(key, "must be one of %s, got %q", strings.Join(allowed, " | "), val)
}

func (c *checker) required(key, val string) {
	if strings.TrimSpace(val) == "" {
		c.add(key, "required")
	}
}

// hostPorts checks a non-empty list of host:port addresses. credHint names where
// credentials belong instead ("" when the address has none). An entry is shown redacted
// (RedactURL): one written as user:password@host:port or as a URL must not print its
// password.
func (c *checker) hostPorts(key string, addrs []string, credHint string) {
	if len(addrs) == 0 {
		c.add(key, "required: at least one host:port")
		return
	}
	for i, a := range addrs {
		switch {
		case strings.Contains(a, "@"):
			c.add(key, "entry %d %q: must be host:port, without a user name or password (%s)", i+1, RedactURL(a), credHint)
		case strings.Contains(a, "/"):
			c.add(key, "entry %d %q: must be host:port, not a URL", i+1, RedactURL(a))
		default:
			if msg := checkHostPort(a, true); msg != "" {
				c.add(key, "entry %d %q: %s", i+1, a, msg)
			}
		}
	}
}

// checkHostPort returns what is wrong with a host:port address, or "".
func checkHostPort(addr string, needHost bool) string {
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

// messageID checks a message_id setting: one of the fixed names, or "<prefix>:<non-empty>".
func (c *checker) messageID(key, val string, fixed []string, prefix string) {
	if slices.Contains(fixed, val) {
		return
	}
	if name, ok := strings.CutPrefix(val, prefix+":"); ok {
		if strings.TrimSpace(name) == "" {
			c.add(key, "%q names no %s: write %s:<name>", val, prefix, prefix)
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
	c.add(key, "must be one of %s | %s:<name>, got %q", strings.Join(opts, " | "), prefix, val)
}

// httpURL checks an absolute http(s) URL with a host. The message shows the URL with any
// password removed.
func (c *checker) httpURL(key, raw string) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		c.add(key, "must be an absolute http:// or https:// URL with a host, got %q", RedactURL(raw))
		return
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			c.add(key, "port %q is not a valid port number", p)
		}
	}
}

// amqpURL checks an amqp:// or amqps:// URL and returns its scheme ("" when invalid). The URL
// is a secret: messages never show it, and a parse error is reported from a copy whose user
// info was removed (the error text of net/url may quote part of the input).
func (c *checker) amqpURL(key, raw string) string {
	if raw == "" {
		c.add(key, "required (or set source.rabbitmq.url_file), e.g. amqp://user:password@127.0.0.1:5672/vhost")
		return ""
	}
	if msg := UserinfoProblem(raw); msg != "" {
		c.add(key, "%s", msg)
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		stripped := stripUserinfo(raw)
		_, err2 := url.Parse(stripped)
		switch {
		case err2 == nil:
			c.add(key, "is not a valid URL: the user or password part is malformed; %s; value not shown", percentEncodeHint)
		case strings.Contains(stripped, "@"):
			c.add(key, "is not a valid URL; details not shown because it may contain a password")
		default:
			c.add(key, "is not a valid URL: %v", unwrapURLError(err2))
		}
		return ""
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		c.add(key, "must start with amqp:// or amqps:// (value not shown: it may contain a password)")
		return ""
	}
	if u.Hostname() == "" {
		c.add(key, "has no host; expected %s://user:password@host:port/vhost", u.Scheme)
		return ""
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			c.add(key, "port %q is not a valid port number", p)
			return ""
		}
	}
	return u.Scheme
}

// percentEncodeHint says how to write reserved characters in the user info of a URL.
const percentEncodeHint = `percent-encode reserved characters in the user name and password: # as %23, ? as %3F, / as %2F, @ as %40, : as %3A, % as %25 (in Go: url.UserPassword(user, password).String())`

// UserinfoProblem returns why the user info of the URL raw is ambiguous, or "" when it is
// not (or raw has none). The user info is everything between "://" and the last "@".
// It is ambiguous when a "/", "?" or "#" comes before the last "@" — net/url then ends the
// authority early and reads the host (or port, or vhost) out of the user name or password,
// so the client dials the wrong host and the password lands in fields that are logged —
// or when more than one "@" precedes the host, where parsers disagree on which one ends
// the user info. A "%" that does not start a %XX escape is refused for the same reason.
// The message never contains any part of raw.
func UserinfoProblem(raw string) string {
	at := strings.LastIndexByte(raw, '@')
	if at < 0 {
		return ""
	}
	start := 0
	if i := strings.Index(raw[:at], "://"); i >= 0 {
		start = i + len("://")
	}
	userinfo := raw[start:at]
	const notShown = " (value not shown: it may contain a password)"
	switch {
	case strings.ContainsAny(userinfo, "/?#"):
		return `is ambiguous: a "/", "?" or "#" comes before the last "@", so the host would be read from the user name or password (an "@" in a vhost or query must be written %40); ` + percentEncodeHint + notShown
	case strings.Contains(userinfo, "@"):
		return `is ambiguous: it contains more than one "@" before the host; ` + percentEncodeHint + notShown
	case badPercent(userinfo):
		return `is ambiguous: a "%" in the user name or password does not start a %XX escape; ` + percentEncodeHint + notShown
	}
	return ""
}

// badPercent reports whether s has a "%" not followed by two hex digits.
func badPercent(s string) bool {
	isHex := func(b byte) bool { return '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F' }
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && (i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2])) {
			return true
		}
	}
	return false
}

// stripUserinfo removes everything between "scheme://" and the last "@" of the authority.
func stripUserinfo(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	scheme := raw[:len(raw)-len(rest)]
	authority, path := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, path = rest[:i], rest[i:]
	}
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		authority = authority[i+1:]
	}
	return scheme + authority + path
}

// unwrapURLError drops the quoted input that *url.Error carries around its cause.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// tls checks a TLS block. on reports whether TLS is in effect for the connection.
func (c *checker) tls(prefix string, t TLS, on bool, offHint string) {
	for _, f := range []struct{ key, path string }{
		{prefix + ".ca_file", t.CAFile}, {prefix + ".cert_file", t.CertFile}, {prefix + ".key_file", t.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		st, err := os.Stat(f.path)
		switch {
		case err != nil:
			c.add(f.key, "cannot use file: %v", err)
		case st.IsDir():
			c.add(f.key, "%q is a directory, expected a PEM file", f.path)
		}
	}
	if t.CertFile != "" && t.KeyFile == "" {
		c.add(prefix+".key_file", "required when %s.cert_file is set (client certificate)", prefix)
	}
	if t.KeyFile != "" && t.CertFile == "" {
		c.add(prefix+".cert_file", "required when %s.key_file is set (client certificate)", prefix)
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
			c.add(prefix+".enabled", "TLS is off, but %s %s set: %s", strings.Join(set, ", "), pluralIs(len(set)), offHint)
		}
	}
}

func pluralIs(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// validKafkaTopic reports whether name is a legal Kafka topic name.
func validKafkaTopic(name string) bool {
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

// validRocketMQTopic reports whether name is a legal RocketMQ topic name.
func validRocketMQTopic(name string) bool {
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

// problems runs every rule and returns what failed, unsorted.
func (c Config) problems() []Problem {
	var ck checker
	switch c.Source.Kind {
	case "kafka":
		c.checkKafka(&ck)
	case "rocketmq":
		c.checkRocketMQ(&ck)
	case "rabbitmq":
		c.checkRabbitMQ(&ck)
	default:
		ck.oneOf("source.kind", c.Source.Kind, "kafka", "rocketmq", "rabbitmq")
	}
	c.checkApp(&ck)
	c.checkDelivery(&ck)
	c.checkRest(&ck)
	return ck.ps
}

func (c Config) checkKafka(ck *checker) {
	k := c.Source.Kafka
	ck.hostPorts("source.kafka.brokers", k.Brokers, "credentials go in source.kafka.sasl")
	ck.required("source.kafka.group", k.Group)
	if len(k.Topics) == 0 {
		ck.add("source.kafka.topics", "required: at least one topic")
	}
	for i, t := range k.Topics {
		if !validKafkaTopic(t) {
			ck.add("source.kafka.topics", "entry %d %q is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)", i+1, t)
		}
	}
	ck.messageID("source.kafka.message_id", k.MessageID, []string{"", "key"}, "header")
	ck.oneOf("source.kafka.start_offset", k.StartOffset, "earliest", "latest")
	if k.CommitInterval <= 0 {
		ck.add("source.kafka.commit_interval", "must be greater than 0, got %s", k.CommitInterval)
	}
	// The brokers' defaults for group.min/max.session.timeout.ms.
	if k.SessionTimeout < 6*time.Second || k.SessionTimeout > 30*time.Minute {
		ck.add("source.kafka.session_timeout", "must be between 6s and 30m (the brokers' group.min/max.session.timeout.ms defaults), got %s", k.SessionTimeout)
	}
	s := k.SASL
	if s.Mechanism == "" {
		if s.Username != "" || s.Password != "" || s.PasswordFile != "" {
			ck.add("source.kafka.sasl.mechanism", "required when sasl.username or sasl.password is set: one of PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512")
		}
	} else {
		ck.oneOf("source.kafka.sasl.mechanism", s.Mechanism, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
		if s.Username == "" {
			ck.add("source.kafka.sasl.username", "required when sasl.mechanism is set")
		}
		if s.Password == "" {
			ck.add("source.kafka.sasl.password", "required when sasl.mechanism is set (or set source.kafka.sasl.password_file, or %s)", EnvVar("source.kafka.sasl.password"))
		}
	}
	ck.tls("source.kafka.tls", k.TLS, k.TLS.Enabled, "set source.kafka.tls.enabled: true, or remove the TLS options")
	if t := c.Delivery.DeadLetter.Target; t != "" && !validKafkaTopic(t) {
		ck.add("delivery.dead_letter.target", "%q is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)", t)
	}
}

func (c Config) checkRocketMQ(ck *checker) {
	r := c.Source.RocketMQ
	ck.hostPorts("source.rocketmq.nameservers", r.Nameservers, "credentials go in source.rocketmq.access_key and secret_key")
	ck.required("source.rocketmq.group", r.Group)
	if r.Topic == "" {
		ck.add("source.rocketmq.topic", "required")
	} else if !validRocketMQTopic(r.Topic) {
		ck.add("source.rocketmq.topic", "%q is not a valid RocketMQ topic name (1-127 of a-z A-Z 0-9 %% | _ -)", r.Topic)
	}
	ck.messageID("source.rocketmq.message_id", r.MessageID, []string{"uniq_key", "keys"}, "property")
	ck.oneOf("source.rocketmq.mode", r.Mode, "concurrent", "orderly")
	ck.oneOf("source.rocketmq.dead_letter_mode", r.DeadLetterMode, "topic", "broker")
	if r.SuspendTime <= 0 {
		ck.add("source.rocketmq.suspend_time", "must be greater than 0, got %s", r.SuspendTime)
	}
	if !validInstanceName(r.InstanceName) {
		ck.add("source.rocketmq.instance_name", "%q: use 1-64 of a-z A-Z 0-9 . _ - (or leave it empty)", r.InstanceName)
	}
	if r.AccessKey != "" && r.SecretKey == "" {
		ck.add("source.rocketmq.secret_key", "required when source.rocketmq.access_key is set (or set source.rocketmq.secret_key_file, or %s)", EnvVar("source.rocketmq.secret_key"))
	}
	if r.AccessKey == "" && r.SecretKey != "" {
		ck.add("source.rocketmq.access_key", "required when source.rocketmq.secret_key is set")
	}
	t := c.Delivery.DeadLetter.Target
	switch {
	case t != "" && r.DeadLetterMode == "broker":
		ck.add("delivery.dead_letter.target", "is set, but source.rocketmq.dead_letter_mode is broker, which sends failed messages to the group's %%DLQ%% topic; remove the target or set dead_letter_mode: topic")
	case t != "" && !validRocketMQTopic(t):
		ck.add("delivery.dead_letter.target", "%q is not a valid RocketMQ topic name (1-127 of a-z A-Z 0-9 %% | _ -)", t)
	}
}

func (c Config) checkRabbitMQ(ck *checker) {
	r := c.Source.RabbitMQ
	scheme := ck.amqpURL("source.rabbitmq.url", r.URL.Reveal())
	ck.required("source.rabbitmq.queue", r.Queue)
	if r.Prefetch < 1 || r.Prefetch > 65535 {
		ck.add("source.rabbitmq.prefetch", "must be between 1 and 65535, got %d", r.Prefetch)
	}
	ck.messageID("source.rabbitmq.message_id", r.MessageID, []string{"message_id"}, "header")
	ck.oneOf("source.rabbitmq.dead_letter_mode", r.DeadLetterMode, "publish", "nack")
	// The AMQP client speaks TLS exactly when the URL scheme is amqps; TLS options next to an
	// amqp:// URL would be silently ignored, so they are an error.
	if scheme == "amqp" && r.TLS.Enabled {
		ck.add("source.rabbitmq.tls.enabled", "is true, but source.rabbitmq.url uses amqp://; TLS needs an amqps:// URL")
	}
	ck.tls("source.rabbitmq.tls", r.TLS, scheme != "amqp" || r.TLS.Enabled, "TLS is used only with an amqps:// URL in source.rabbitmq.url; use amqps:// or remove the TLS options")
	if u := r.ManagementURL; u != "" {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil {
			ck.add("source.rabbitmq.management_url", "must be an http:// or https:// URL without credentials (set management_username and management_password), e.g. http://127.0.0.1:15672")
		}
	}
	if c.Delivery.DeadLetter.Target != "" && r.DeadLetterMode == "nack" {
		ck.add("delivery.dead_letter.target", "is set, but source.rabbitmq.dead_letter_mode is nack, which sends failed messages to the queue's own dead-letter exchange; remove the target or set dead_letter_mode: publish")
	}
}

func (c Config) checkApp(ck *checker) {
	a := c.App
	if a.URL == "" {
		ck.add("app.url", "required: the URL the sidecar pushes messages to, e.g. http://127.0.0.1:8080/messages")
	} else {
		ck.httpURL("app.url", a.URL)
	}
	if a.HealthURL != "" {
		ck.httpURL("app.health_url", a.HealthURL)
	}
	if a.Timeout <= 0 {
		ck.add("app.timeout", "must be greater than 0, got %s", a.Timeout)
	}
	switch {
	case strings.TrimSpace(a.EventType) == "":
		ck.add("app.event_type", "required (it is the ce-type header), e.g. mqsidecar.message")
	case strings.ContainsFunc(a.EventType, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		ck.add("app.event_type", "must not contain control characters (it is sent as the ce-type header)")
	}
	if a.MaxResponseBytes <= 0 {
		ck.add("app.max_response_bytes", "must be greater than 0, got %d", a.MaxResponseBytes)
	}
}

func (c Config) checkDelivery(ck *checker) {
	d := c.Delivery
	ck.oneOf("delivery.ordering", d.Ordering, "partition", "key", "none")
	if d.MaxInflight < 1 || d.MaxInflight > 100000 {
		ck.add("delivery.max_inflight", "must be between 1 and 100000, got %d", d.MaxInflight)
	}
	if d.PartitionLookahead < 0 {
		ck.add("delivery.partition_lookahead", "must be 0 (max_inflight/2) or positive, got %d", d.PartitionLookahead)
	}
	switch {
	case d.MaxAttempts < 0:
		ck.add("delivery.max_attempts", "must be 0 (unlimited) or more, got %d", d.MaxAttempts)
	case d.MaxAttempts > 0 && !c.HasDeadLetter() && !d.DropAfterMaxAttempts:
		alt := ""
		switch c.Source.Kind {
		case "rabbitmq":
			alt = " (or source.rabbitmq.dead_letter_mode: nack)"
		case "rocketmq":
			alt = " (or source.rocketmq.dead_letter_mode: broker)"
		}
		ck.add("delivery.max_attempts", "is %d, but no dead-letter target is configured, so messages would be dropped after %d attempts; "+
			"either set delivery.dead_letter.target%s, or set delivery.drop_after_max_attempts: true to drop them deliberately", d.MaxAttempts, d.MaxAttempts, alt)
	}
	b := d.Backoff
	if b.Initial <= 0 {
		ck.add("delivery.backoff.initial", "must be greater than 0, got %s", b.Initial)
	}
	if b.Max < b.Initial {
		ck.add("delivery.backoff.max", "must be at least delivery.backoff.initial (%s), got %s", b.Initial, b.Max)
	}
	if b.Multiplier < 1 {
		ck.add("delivery.backoff.multiplier", "must be at least 1, got %v", b.Multiplier)
	}
	if d.MaxMessageBytes < 0 {
		ck.add("delivery.max_message_bytes", "must be 0 (no limit) or more, got %d", d.MaxMessageBytes)
	}
}

func (c Config) checkRest(ck *checker) {
	if d := c.Dedup; d.Enabled {
		if d.TTL <= 0 {
			ck.add("dedup.ttl", "must be greater than 0, got %s", d.TTL)
		}
		switch d.Store {
		case "bbolt":
			if strings.TrimSpace(d.Path) == "" {
				ck.add("dedup.path", "required when dedup.enabled is true")
			}
			if d.MaxEntries < 0 {
				ck.add("dedup.max_entries", "must be 0 (bounded by ttl only) or more, got %d", d.MaxEntries)
			}
		case "redis":
			c.checkDedupRedis(ck)
		default:
			ck.oneOf("dedup.store", d.Store, "bbolt", "redis")
		}
	}
	if l := c.Admin.Listen; l != "" {
		if msg := checkHostPort(l, false); msg != "" {
			ck.add("admin.listen", "%q: %s, or \"\" to disable the admin listener", l, msg)
		}
	}
	if c.ShutdownTimeout <= 0 {
		ck.add("shutdown_timeout", "must be greater than 0, got %s", c.ShutdownTimeout)
	}
	if c.DrainDelay < 0 {
		ck.add("drain_delay", "must be 0 or more, got %s", c.DrainDelay)
	}
	if i := c.Durability.Interval; i != 0 && i < 10*time.Second {
		ck.add("durability.interval", "must be 0 (check at start only) or at least 10s, got %s", i)
	}
	ck.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	ck.oneOf("log.format", c.Log.Format, "json", "text")
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

func (c Config) checkDedupRedis(ck *checker) {
	d, r := c.Dedup, c.Dedup.Redis
	if len(r.Addrs) == 0 {
		ck.add("dedup.redis.addrs", "required when dedup.store is redis: at least one host:port (the server, the cluster nodes, or the Sentinels with dedup.redis.master_name), e.g. [redis.internal:6379]")
	} else {
		ck.hostPorts("dedup.redis.addrs", r.Addrs, "credentials go in dedup.redis.username and password")
	}
	if d.MaxEntries != 0 {
		ck.add("dedup.max_entries", "applies to the bbolt store only; with dedup.store: redis the number of IDs is bounded by dedup.ttl (and the server's maxmemory): set it to 0")
	}
	if r.DB < 0 {
		ck.add("dedup.redis.db", "must be 0 or more, got %d", r.DB)
	}
	if r.DB != 0 && len(r.Addrs) > 1 && r.MasterName == "" {
		ck.add("dedup.redis.db", "is %d, but several dedup.redis.addrs without master_name mean a Redis Cluster, which has database 0 only", r.DB)
	}
	if r.Username != "" && r.Password == "" {
		ck.add("dedup.redis.password", "required when dedup.redis.username is set (or set dedup.redis.password_file, or %s)", EnvVar("dedup.redis.password"))
	}
	if r.WaitReplicas < 0 {
		ck.add("dedup.redis.wait_replicas", "must be 0 (the server fsyncs: appendonly yes, appendfsync always) or more, got %d", r.WaitReplicas)
	}
	if r.Timeout <= 0 {
		ck.add("dedup.redis.timeout", "must be greater than 0, got %s", r.Timeout)
	}
	switch {
	case r.Lease < time.Second:
		ck.add("dedup.redis.lease", "must be at least 1s, got %s", r.Lease)
	case r.Timeout > 0 && r.Lease < 2*r.Timeout:
		ck.add("dedup.redis.lease", "is %s, but it must be at least twice dedup.redis.timeout (%s): leases are renewed every lease/3, and a renewal may take a timeout", r.Lease, r.Timeout)
	}
	if p := r.KeyPrefix; strings.ContainsAny(p, "{}") || strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ' ' }) {
		ck.add("dedup.redis.key_prefix", "%q must not contain { } (the ID is the key's hash tag), spaces or control characters", p)
	}
	ck.tls("dedup.redis.tls", r.TLS, r.TLS.Enabled, "set dedup.redis.tls.enabled: true, or remove the TLS options")
}
