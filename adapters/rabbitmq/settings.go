package rabbitmq

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Settings configures the RabbitMQ source: the section source.rabbitmq of the configuration
// (docs/guarantees.md, "Configuration"). Package config composes it into the file's shape,
// reads it from the file and the environment, and validates it with Check.
type Settings struct {
	// URL is the AMQP URL; it may carry a password, so it is a Secret.
	URL      settings.Secret `mapstructure:"url" log:"url"`
	URLFile  string          `mapstructure:"url_file"` // read at load time, overrides URL
	Queue    string          `mapstructure:"queue"`
	Prefetch int             `mapstructure:"prefetch"`
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
	TLS settings.TLS `mapstructure:"tls"`
	// ManagementURL is the management HTTP API ("http://127.0.0.1:15672"), read by the
	// durability checks for what AMQP cannot tell (queue durability, type, policies);
	// "" = those are reported unknown. The user and password default to the AMQP URL's.
	ManagementURL          string          `mapstructure:"management_url"`
	ManagementUsername     string          `mapstructure:"management_username"`
	ManagementPassword     settings.Secret `mapstructure:"management_password"`
	ManagementPasswordFile string          `mapstructure:"management_password_file"` // overrides ManagementPassword
	// PublishChannels is how many confirm channels the publisher (publish endpoint) opens on
	// its connection: each carries one publish at a time, so it bounds the publishes in
	// flight. Unused unless publishing is on.
	PublishChannels int `mapstructure:"publish_channels"`
}

// Defaults returns the settings used for every key not set elsewhere.
func Defaults() Settings {
	return Settings{
		Prefetch:        64,
		MessageID:       "message_id",
		DeadLetterMode:  "publish",
		PublishChannels: 16,
	}
}

// Check implements settings.Broker: every rule of the section, and that a dead-letter
// target is not combined with dead_letter_mode nack.
func (r Settings) Check(ck *settings.Checker, deadLetterTarget string) {
	scheme := checkURL(ck, "source.rabbitmq.url", r.URL.Reveal())
	ck.Required("source.rabbitmq.queue", r.Queue)
	if r.Prefetch < 1 || r.Prefetch > 65535 {
		ck.Add("source.rabbitmq.prefetch", "must be between 1 and 65535, got %d", r.Prefetch)
	}
	if r.PublishChannels < 1 || r.PublishChannels > 1024 {
		ck.Add("source.rabbitmq.publish_channels", "must be between 1 and 1024, got %d", r.PublishChannels)
	}
	ck.MessageID("source.rabbitmq.message_id", r.MessageID, []string{"message_id"}, "header")
	ck.OneOf("source.rabbitmq.dead_letter_mode", r.DeadLetterMode, "publish", "nack")
	// The AMQP client speaks TLS exactly when the URL scheme is amqps; TLS options next to an
	// amqp:// URL would be silently ignored, so they are an error.
	if scheme == "amqp" && r.TLS.Enabled {
		ck.Add("source.rabbitmq.tls.enabled", "is true, but source.rabbitmq.url uses amqp://; TLS needs an amqps:// URL")
	}
	r.TLS.Check(ck, "source.rabbitmq.tls", scheme != "amqp" || r.TLS.Enabled, "TLS is used only with an amqps:// URL in source.rabbitmq.url; use amqps:// or remove the TLS options")
	if u := r.ManagementURL; u != "" {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil {
			ck.Add("source.rabbitmq.management_url", "must be an http:// or https:// URL without credentials (set management_username and management_password), e.g. http://127.0.0.1:15672")
		}
	}
	if deadLetterTarget != "" && r.DeadLetterMode == "nack" {
		ck.Add("delivery.dead_letter.target", "is set, but source.rabbitmq.dead_letter_mode is nack, which sends failed messages to the queue's own dead-letter exchange; remove the target or set dead_letter_mode: publish")
	}
}

// BrokerDeadLetter implements settings.Broker: dead_letter_mode nack.
func (r Settings) BrokerDeadLetter() bool { return r.DeadLetterMode == "nack" }

// DeadLetterAlternative implements settings.Broker.
func (Settings) DeadLetterAlternative() string { return "source.rabbitmq.dead_letter_mode: nack" }

// DedupKeyPrefix implements settings.Broker: "mqsidecar:rabbitmq:<vhost>:<queue>:".
func (r Settings) DedupKeyPrefix() string {
	vhost := "/"
	if u, err := url.Parse(r.URL.Reveal()); err == nil && len(u.Path) > 1 {
		vhost, _ = url.PathUnescape(u.Path[1:])
	}
	return "mqsidecar:rabbitmq:" + vhost + ":" + r.Queue + ":"
}

// SecretFiles implements settings.SecretFiler.
func (r *Settings) SecretFiles() []settings.SecretFile {
	return []settings.SecretFile{
		{Key: "source.rabbitmq.url_file", Path: r.URLFile, Dst: &r.URL},
		{Key: "source.rabbitmq.management_password_file", Path: r.ManagementPasswordFile, Dst: &r.ManagementPassword},
	}
}

// checkURL checks an amqp:// or amqps:// URL and returns its scheme ("" when invalid). The
// URL is a secret: messages never show it, and a parse error is reported from a copy whose
// user info was removed (the error text of net/url may quote part of the input).
func checkURL(ck *settings.Checker, key, raw string) string {
	if raw == "" {
		ck.Add(key, "required (or set source.rabbitmq.url_file), e.g. amqp://user:password@127.0.0.1:5672/vhost")
		return ""
	}
	if msg := UserinfoProblem(raw); msg != "" {
		ck.Add(key, "%s", msg)
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		stripped := stripUserinfo(raw)
		_, err2 := url.Parse(stripped)
		switch {
		case err2 == nil:
			ck.Add(key, "is not a valid URL: the user or password part is malformed; %s; value not shown", percentEncodeHint)
		case strings.Contains(stripped, "@"):
			ck.Add(key, "is not a valid URL; details not shown because it may contain a password")
		case raw != stripped:
			// The user info may be fine and the rest broken, or the other way round.
			ck.Add(key, "is not a valid URL: %v; %s", redactURLError(err2), percentEncodeHint)
		default:
			ck.Add(key, "is not a valid URL: %v", redactURLError(err2))
		}
		return ""
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		ck.Add(key, "must start with amqp:// or amqps:// (value not shown: it may contain a password)")
		return ""
	}
	if u.Hostname() == "" {
		ck.Add(key, "has no host; expected %s://user:password@host:port/vhost", u.Scheme)
		return ""
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			ck.Add(key, "port %q is not a valid port number", p)
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
