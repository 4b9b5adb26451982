package ackgate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Verdict is the gate's reading of one push.
type Verdict int

const (
	// Success: 2xx (or Dapr {"status":"SUCCESS"}). The message is done.
	Success Verdict = iota
	// Retry: a transient failure (5xx, 408, 429, timeout, refused, Dapr RETRY).
	Retry
	// Permanent: other 4xx, or a message the sidecar refuses to push. Dead-lettered when a
	// target exists, otherwise retried like a transient failure.
	Permanent
	// Drop: the app answered Dapr {"status":"DROP"}: its explicit choice.
	Drop
)

func (v Verdict) String() string {
	switch v {
	case Success:
		return "success"
	case Retry:
		return "retry"
	case Permanent:
		return "permanent"
	case Drop:
		return "drop"
	}
	return "unknown"
}

// Result is the outcome of one push.
type Result struct {
	Verdict Verdict
	// Status is the HTTP status, 0 when no response arrived.
	Status int
	// RetryAfter is the app's Retry-After on 429/503, 0 when absent.
	RetryAfter time.Duration
	// Err describes a failure (transport error, status text, refusal).
	Err error
	// Duration is how long the push took.
	Duration time.Duration
}

// PushOptions configures a Pusher.
type PushOptions struct {
	URL              string
	Timeout          time.Duration
	EventType        string
	MaxResponseBytes int64
	MaxMessageBytes  int
	// Conns bounds the keep-alive pool; set it to max_inflight so every in-flight push can
	// reuse a connection.
	Conns int
}

// Pusher performs the HTTP push of the SPEC's contract. It is safe for concurrent use.
type Pusher struct {
	opts   PushOptions
	client *http.Client
	// invalidHeader is called once per header not forwarded (for metrics).
	invalidHeader func()
}

// NewPusher returns a Pusher with a keep-alive pool sized to opts.Conns.
func NewPusher(opts PushOptions, invalidHeader func()) *Pusher {
	if opts.Conns < 1 {
		opts.Conns = 1
	}
	if invalidHeader == nil {
		invalidHeader = func() {}
	}
	tr := &http.Transport{
		Proxy:               nil, // the app is local: never route pushes through HTTP_PROXY
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        opts.Conns,
		MaxIdleConnsPerHost: opts.Conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &Pusher{
		opts: opts,
		client: &http.Client{
			Transport: tr,
			// A redirect from a local app is a misconfiguration; surface it, don't follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		invalidHeader: invalidHeader,
	}
}

// Close releases idle connections.
func (p *Pusher) Close() { p.client.CloseIdleConnections() }

// Push posts d to the app and classifies the answer. attempt is ce-deliveryattempt.
func (p *Pusher) Push(ctx context.Context, d *adapters.Delivery, attempt int, redelivered bool) Result {
	start := time.Now()
	res := p.push(ctx, d, attempt, redelivered)
	res.Duration = time.Since(start)
	return res
}

func (p *Pusher) push(ctx context.Context, d *adapters.Delivery, attempt int, redelivered bool) Result {
	if p.opts.MaxMessageBytes > 0 && len(d.Payload) > p.opts.MaxMessageBytes {
		return Result{Verdict: Permanent, Err: fmt.Errorf("payload of %d bytes exceeds delivery.max_message_bytes (%d)", len(d.Payload), p.opts.MaxMessageBytes)}
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.opts.URL, bytes.NewReader(d.Payload))
	if err != nil {
		return Result{Verdict: Permanent, Err: fmt.Errorf("build request: %w", err)}
	}
	p.setHeaders(req.Header, d, attempt, redelivered)
	resp, err := p.client.Do(req)
	if err != nil {
		return Result{Verdict: Retry, Err: err}
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, p.opts.MaxResponseBytes+1))
	if int64(len(body)) > p.opts.MaxResponseBytes {
		body = nil // too large to be a Dapr answer; the connection is not reused
	} else {
		_, _ = io.Copy(io.Discard, resp.Body) // drain for keep-alive
	}
	return classify(resp, body, readErr)
}

// classify applies the SPEC's response rules.
func classify(resp *http.Response, body []byte, readErr error) Result {
	code := resp.StatusCode
	r := Result{Status: code}
	switch {
	case code >= 200 && code < 300:
		if readErr != nil {
			// The app said 2xx; a broken body read does not undo that, unless the body
			// might have been a Dapr RETRY/DROP we failed to read.
			r.Verdict = Success
			return r
		}
		return daprAnswer(r, body)
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		r.Verdict = Retry
		r.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	case code >= 500, code == http.StatusRequestTimeout:
		r.Verdict = Retry
	case code >= 400:
		r.Verdict = Permanent
	default: // 1xx, 3xx: a misbehaving app; nothing is lost by retrying
		r.Verdict = Retry
	}
	r.Err = fmt.Errorf("app answered %d %s%s", code, http.StatusText(code), snippet(body))
	return r
}

// daprAnswer honours Dapr's {"status":"SUCCESS"|"RETRY"|"DROP"} in a 2xx body; any other body
// (or none) is plain success.
func daprAnswer(r Result, body []byte) Result {
	r.Verdict = Success
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return r
	}
	var ans struct {
		Status *string `json:"status"`
	}
	if json.Unmarshal(trimmed, &ans) != nil || ans.Status == nil {
		return r
	}
	switch strings.ToUpper(*ans.Status) {
	case "SUCCESS", "":
	case "RETRY":
		r.Verdict = Retry
		r.Err = errors.New(`app answered {"status":"RETRY"}`)
	case "DROP":
		r.Verdict = Drop
		r.Err = errors.New(`app answered {"status":"DROP"}`)
	default:
		// Dapr treats an unknown status as an error to retry; so do we.
		r.Verdict = Retry
		r.Err = fmt.Errorf("app answered unknown status %q", *ans.Status)
	}
	return r
}

func snippet(body []byte) string {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return ""
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return ": " + strings.ToValidUTF8(s, "?")
}

// parseRetryAfter reads delay-seconds or an HTTP-date; 0 when absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// reserved headers are never forwarded from the message: hop-by-hop headers, framing, and
// those the sidecar sets itself.
var reserved = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Trailers": true, "Transfer-Encoding": true,
	"Upgrade": true, "Host": true, "Content-Length": true, "Content-Type": true, "Expect": true,
}

func (p *Pusher) setHeaders(h http.Header, d *adapters.Delivery, attempt int, redelivered bool) {
	for _, kv := range d.Headers {
		name := http.CanonicalHeaderKey(kv.Key)
		if reserved[name] || strings.HasPrefix(name, "Ce-") || !validHeaderName(kv.Key) || !validHeaderValue(kv.Value) {
			p.invalidHeader()
			continue
		}
		h.Add(name, kv.Value)
	}
	// CloudEvents binary mode; set after forwarding so nothing can override them.
	h["ce-specversion"] = []string{"1.0"}
	h["ce-id"] = []string{headerSafe(d.ID)}
	h["ce-source"] = []string{headerSafe(d.Source)}
	h["ce-type"] = []string{p.opts.EventType}
	if !d.Time.IsZero() {
		h["ce-time"] = []string{d.Time.UTC().Format(time.RFC3339Nano)}
	}
	if d.Key != "" && validHeaderValue(d.Key) {
		h["ce-partitionkey"] = []string{d.Key}
	}
	if d.HasCoordinates {
		h["ce-partition"] = []string{strconv.FormatInt(int64(d.Partition), 10)}
		h["ce-offset"] = []string{strconv.FormatInt(d.Offset, 10)}
	}
	h["ce-deliveryattempt"] = []string{strconv.Itoa(attempt)}
	if redelivered {
		h["ce-redelivered"] = []string{"true"}
	}
	ct := d.ContentType
	if ct == "" || !validHeaderValue(ct) {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
}

// headerSafe percent-encodes the bytes that cannot appear in a header value, so an ID with
// control characters still reaches the app (recognisably) instead of failing every push.
func headerSafe(s string) string {
	if validHeaderValue(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && c != '\t' || c == 0x7f || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// validHeaderValue rejects control characters (CR, LF, NUL, ...) except tab, which would
// let a message inject headers or break the request.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
