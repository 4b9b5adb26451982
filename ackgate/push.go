package ackgate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/appclient"
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
	// TLS configures an https app (app.tls: its CA file); nil means the system's roots.
	TLS *tls.Config
	// TraceContext sends the traceparent and tracestate of the span in the push's context
	// (the push span, trace.go) instead of the message's own. The gate sets it when tracing
	// is on.
	TraceContext bool
}

// Pusher performs the HTTP push of the contract in docs/guarantees.md ("The HTTP push"). It is safe for concurrent use.
type Pusher struct {
	opts PushOptions
	pool *appclient.Client
	err  error // a bad URL: every push fails permanently with it
	// invalidHeader is called once per header not forwarded, with its name.
	invalidHeader func(name string)
}

// NewPusher returns a Pusher with a keep-alive pool sized to opts.Conns.
func NewPusher(opts PushOptions, invalidHeader func(name string)) *Pusher {
	if opts.Conns < 1 {
		opts.Conns = 1
	}
	if invalidHeader == nil {
		invalidHeader = func(string) {}
	}
	p := &Pusher{opts: opts, invalidHeader: invalidHeader}
	p.pool, p.err = appclient.New(appclient.Options{URL: opts.URL, Conns: opts.Conns, TLS: opts.TLS})
	return p
}

// Close releases idle connections.
func (p *Pusher) Close() {
	if p.pool != nil {
		p.pool.Close()
	}
}

// Push posts d to the app and classifies the answer. attempt is ce-deliveryattempt.
func (p *Pusher) Push(ctx context.Context, d *adapters.Delivery, attempt int, redelivered bool) Result {
	return p.pushIn(ctx, ctx, d, attempt, redelivered)
}

// pushIn is Push whose traceparent (with TraceContext) is the span in spanCtx, while ctx
// alone cancels: the connection keeps watching the one context all of the gate's pushes
// share (appclient registers a watch per new context), whatever their spans.
func (p *Pusher) pushIn(ctx, spanCtx context.Context, d *adapters.Delivery, attempt int, redelivered bool) Result {
	start := time.Now()
	res := p.push(ctx, spanCtx, d, attempt, redelivered)
	res.Duration = time.Since(start)
	return res
}

func (p *Pusher) push(ctx, spanCtx context.Context, d *adapters.Delivery, attempt int, redelivered bool) Result {
	if p.err != nil {
		return Result{Verdict: Permanent, Err: p.err}
	}
	if p.opts.MaxMessageBytes > 0 && len(d.Payload) > p.opts.MaxMessageBytes {
		return Result{Verdict: Permanent, Err: fmt.Errorf("payload of %d bytes exceeds delivery.max_message_bytes (%d)", len(d.Payload), p.opts.MaxMessageBytes)}
	}
	resp, err := p.pool.Do(ctx, time.Now().Add(p.opts.Timeout), func(w *bufio.Writer) {
		p.writeHeaders(spanCtx, w, d, attempt, redelivered)
	}, d.Payload, p.opts.MaxResponseBytes)
	if err != nil {
		return Result{Verdict: Retry, Err: err}
	}
	return classify(resp)
}

// classify applies the response rules of docs/guarantees.md ("Answers").
func classify(resp appclient.Response) Result {
	code, body := resp.Status, resp.Body
	r := Result{Status: code}
	switch {
	case code >= 200 && code < 300:
		return daprAnswer(r, body)
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		r.Verdict = Retry
		r.RetryAfter = parseRetryAfter(resp.RetryAfter, time.Now())
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

// writeHeaders writes the forwarded message headers, then the CloudEvents binary-mode
// headers (after, so nothing from the message can override them), as CRLF lines.
// With TraceContext, the push span's traceparent and tracestate follow.
func (p *Pusher) writeHeaders(ctx context.Context, w *bufio.Writer, d *adapters.Delivery, attempt int, redelivered bool) {
	p.eachHeader(d, attempt, redelivered, func(k, v string) { writeLine(w, k, v) })
	if p.opts.TraceContext {
		// A closure of its own: one that reaches an interface is allocated on every push,
		// which tracing off must not pay.
		traceContext.Inject(ctx, lineCarrier(func(k, v string) { writeLine(w, k, v) }))
	}
}

func writeLine(w *bufio.Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(v)
	w.WriteString("\r\n")
}

// eachHeader calls line with each header of the push in the order writeHeaders writes them.
func (p *Pusher) eachHeader(d *adapters.Delivery, attempt int, redelivered bool, line func(k, v string)) {
	for _, kv := range d.Headers {
		name := http.CanonicalHeaderKey(kv.Key)
		if name == "Content-Type" || p.opts.TraceContext && isTraceHeader(name) {
			continue // already carried as the request's Content-Type; the push span's context
		}
		if reserved[name] || strings.HasPrefix(name, "Ce-") || !validHeaderName(kv.Key) || !validHeaderValue(kv.Value) {
			p.invalidHeader(kv.Key)
			continue
		}
		line(kv.Key, kv.Value)
	}
	line("ce-specversion", "1.0")
	line("ce-id", headerSafe(d.ID))
	line("ce-source", headerSafe(d.Source))
	line("ce-type", p.opts.EventType)
	if !d.Time.IsZero() {
		line("ce-time", d.Time.UTC().Format(time.RFC3339Nano))
	}
	if d.Key != "" && validHeaderValue(d.Key) {
		line("ce-partitionkey", d.Key)
	}
	if d.HasCoordinates {
		line("ce-partition", strconv.FormatInt(int64(d.Partition), 10))
		line("ce-offset", strconv.FormatInt(d.Offset, 10))
	}
	line("ce-deliveryattempt", strconv.Itoa(attempt))
	if redelivered {
		line("ce-redelivered", "true")
	}
	ct := d.ContentType
	if ct == "" || !validHeaderValue(ct) {
		ct = "application/octet-stream"
	}
	line("Content-Type", ct)
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
