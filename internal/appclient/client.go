// Package appclient is the sidecar's HTTP/1.1 client for the push to the app: a keep-alive
// pool for one origin, a request writer and a response parser, used by ackgate's Pusher.
//
// Why not net/http's Transport: BenchmarkPushClient (ackgate, run by `make bench`) pushes
// the partition-scenario shape (8 and 64 pushes at once, a 256-byte body with the
// CloudEvents and three message headers, the app in another process answering 200 at once
// or after 0.2 ms) through this client and through a Transport tuned for it (idle pool
// sized to the concurrency, no proxy, no compression, HTTP/1.1). Medians of 5 runs of
// 20,000 pushes on 2 shared cores (CPU is the pushing process's user+system time per push):
//
//	app      pushes at once   CPU per push (this / Transport)   allocations per push   bytes per push
//	0 ms     8                14.4 µs / 36.2 µs (2.5×)          5 / 80                 71 / 5,605
//	0 ms     64               13.0 µs / 33.6 µs (2.6×)          5 / 80                 71 / 5,603
//	0.2 ms   8                26.6 µs / 51.3 µs (1.9×)          5 / 80                 71 / 5,603
//	0.2 ms   64               13.7 µs / 34.8 µs (2.5×)          5 / 80                 71 / 5,606
//
// Wall time per push was lower too (e.g. 41 vs 71 µs at 0 ms × 64), but it is noisy on a
// shared machine; the CPU and allocation figures are what decided: on the push path, every
// message, the Transport costs about twice the CPU of the sidecar's whole push.
package appclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/ascii"
)

// Client is a minimal HTTP/1.1 keep-alive client for one origin, the local app. net/http's
// Transport hands every request to two goroutines per connection (a write loop and a read
// loop); on the push path, which is every message, that costs more CPU than the sidecar's
// own work. Here the pushing goroutine writes the request and reads the response itself:
// one write and (usually) one read system call per push.
//
// What it handles itself: the answer nearly every app gives (HTTP/1.1, a status of 200 or
// more other than 204 and 304, header lines of token names and values without control
// bytes, one Content-Length, the header block already buffered) is parsed by readSimple
// without net/http's allocations. Everything else (chunked, HTTP/1.0, a body until close,
// 1xx, 204/304, folded, duplicated or malformed headers) goes to net/http.ReadResponse, so
// framing there follows the standard library. What net/http's Transport does around
// ReadResponse is done here the same way (readResponse):
//
//   - informational answers (1xx other than 101: 100 Continue, 103 Early Hints, ...) are
//     read and discarded, and the answer after them is the push's answer;
//   - 101 Switching Protocols is a final answer the push cannot use: a failed push, and the
//     connection is closed;
//   - the status lines and headers of one exchange, informational answers included, may
//     take at most MaxHeaderBytes; beyond that the push fails and the connection is closed;
//   - a body longer than max_response_bytes is not read, and the connection is closed.
//
// A connection is reused only when its framing is certain: the answer said keep-alive, its
// body was read to the end, and no byte beyond it has arrived (bytes nobody asked for would
// be read as the next push's answer). FuzzReadResponse checks readResponse against
// net/http.ReadResponse: same status, body and reuse decision, and when the connection is
// reused, the same end of the answer.
type Client struct {
	scheme, host, path string // host is host:port
	hostHeader         string
	tlsConfig          *tls.Config
	dialer             net.Dialer
	idle               chan *pconn
	// idleTimeout closes connections unused for this long instead of reusing them: apps
	// commonly close idle keep-alive connections after 5 s (Node.js), and a request on a
	// connection the app is closing fails.
	idleTimeout time.Duration
	// checkAfter: a connection idle longer than this is checked for a close by the app
	// before it is reused (a busy connection is not worth the extra system call).
	checkAfter time.Duration
	mu         sync.Mutex
	closed     bool
}

type pconn struct {
	c        net.Conn
	lim      *limitReader // between c and br: bounds the header bytes of an answer
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	ctx      context.Context // the context watched for cancellation (see watch)
	stop     func() bool     // stops watching ctx
}

// Options configure New.
type Options struct {
	// URL is the app's endpoint, http or https; every request is a POST to it.
	URL string
	// Conns bounds the idle connections kept; size it to the pushes in flight at once.
	Conns int
	// TLS configures https (its ServerName defaults to the URL's host); nil means the
	// system's roots. Ignored for http.
	TLS *tls.Config
	// CheckAfter: a connection idle for longer is checked for a close by the app before
	// reuse; 0 means 500 ms, < 0 every reuse.
	CheckAfter time.Duration
}

// New returns a client for o.URL. It dials nothing: connections are made by Do.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("app url %q: scheme must be http or https", o.URL)
	}
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	switch {
	case o.CheckAfter == 0:
		o.CheckAfter = 500 * time.Millisecond
	case o.CheckAfter < 0:
		o.CheckAfter = 0
	}
	p := &Client{
		scheme: u.Scheme, host: host, path: u.RequestURI(), hostHeader: u.Host,
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		idle:        make(chan *pconn, max(o.Conns, 1)),
		idleTimeout: 4 * time.Second,
		checkAfter:  o.CheckAfter,
	}
	if u.Scheme == "https" {
		if o.TLS != nil {
			p.tlsConfig = o.TLS.Clone()
		} else {
			p.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if p.tlsConfig.ServerName == "" {
			p.tlsConfig.ServerName = u.Hostname()
		}
	}
	return p, nil
}

// get returns an idle connection or dials a new one by the deadline.
func (p *Client) get(ctx context.Context, deadline time.Time) (*pconn, error) {
	for {
		select {
		case pc := <-p.idle:
			idle := time.Since(pc.lastUsed)
			if idle < p.idleTimeout && (idle < p.checkAfter || alive(pc)) {
				return pc, nil
			}
			pc.close()
			continue
		default:
		}
		break
	}
	dialer := p.dialer
	dialer.Deadline = deadline
	c, err := dialer.DialContext(ctx, "tcp", p.host)
	if err != nil {
		return nil, err
	}
	if p.tlsConfig != nil {
		tc := tls.Client(c, p.tlsConfig)
		_ = c.SetDeadline(deadline)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	lim := &limitReader{r: c, n: math.MaxInt64, max: MaxHeaderBytes}
	return &pconn{c: c, lim: lim, br: bufio.NewReaderSize(lim, 4096), bw: bufio.NewWriterSize(c, 4096)}, nil
}

func (p *Client) put(pc *pconn) {
	pc.lastUsed = time.Now()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if !closed {
		select {
		case p.idle <- pc:
			return
		default:
		}
	}
	pc.close()
}

func (p *Client) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	for {
		select {
		case pc := <-p.idle:
			pc.close()
		default:
			return
		}
	}
}

// Response is what the pusher needs of an answer.
type Response struct {
	Status     int
	RetryAfter string // the first Retry-After header's value, "" when none
	Body       []byte // at most maxBody bytes; nil when larger
}

// Do sends one POST. writeHeaders writes the header lines (each ending in CRLF). The
// deadline bounds the whole exchange; ctx cancellation aborts it. A failure is never
// retried here: the app may have read the request, so a second push must be a counted,
// flagged attempt of the gate.
func (p *Client) Do(ctx context.Context, deadline time.Time, writeHeaders func(*bufio.Writer), body []byte, maxBody int64) (r Response, err error) {
	if err := ctx.Err(); err != nil {
		return r, err
	}
	pc, err := p.get(ctx, deadline)
	if err != nil {
		return r, err
	}
	ok := false
	defer func() {
		if ok {
			_ = pc.c.SetDeadline(time.Time{})
			p.put(pc)
		} else {
			pc.close()
		}
	}()
	_ = pc.c.SetDeadline(deadline)
	pc.watch(ctx)
	if err := ctx.Err(); err != nil {
		// Cancelled while the deadline was being set: the watcher may have run first.
		return r, err
	}

	bw := pc.bw
	bw.WriteString("POST ")
	bw.WriteString(p.path)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(p.hostHeader)
	bw.WriteString("\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n")
	writeHeaders(bw)
	bw.WriteString("\r\n")
	bw.Write(body)
	if err := bw.Flush(); err != nil {
		return r, err
	}
	r, keep, err := readResponse(pc.br, pc.lim, maxBody)
	// Bytes already here beyond the answer were not asked for: the framing is in doubt.
	ok = err == nil && keep && pc.br.Buffered() == 0
	return r, err
}

// watch makes cancellation of ctx cut the connection's exchange (its deadline is moved to
// the past). The registration is kept while the connection is reused with the same
// context, so the common case, every push under the gate's one context, costs nothing.
func (pc *pconn) watch(ctx context.Context) {
	if pc.ctx == ctx {
		return
	}
	if pc.stop != nil {
		pc.stop()
	}
	pc.ctx = ctx
	c := pc.c
	pc.stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
}

func (pc *pconn) close() {
	if pc.stop != nil {
		pc.stop()
	}
	pc.c.Close()
}

// MaxHeaderBytes bounds the status lines and header blocks read for one push, informational
// answers included, as net/http's Transport bounds them (its MaxResponseHeaderBytes; its
// default is 10 MiB, this is net/http's DefaultMaxHeaderBytes, the server's limit): an app
// that never ends its header block fails the push instead of growing the heap until
// app.timeout.
const MaxHeaderBytes = 1 << 20

// limitReader sits between a connection and its bufio.Reader: while an answer's header
// block is read, at most n more bytes come from the connection (readResponse sets n to max
// before the answer and lifts it for the body).
type limitReader struct {
	r   io.Reader
	n   int64
	max int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeaderLimit
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

var errHeaderLimit = errors.New("header limit reached")

// headerErr names the header limit when it caused err.
func (l *limitReader) headerErr(err error) error {
	if l.n <= 0 {
		return fmt.Errorf("response status lines and headers exceed %d bytes", l.max)
	}
	return err
}

// readResponse reads one push's answer from br, which reads from lim: informational
// answers (1xx but 101) are skipped, and all the header bytes together are bounded by
// lim.max. The common answer is parsed by readSimple without net/http's allocations;
// everything else by net/http.ReadResponse. keep reports whether the framing allows
// another exchange on the connection; a body declared longer than maxBody is not read
// (r.Body nil, keep false).
func readResponse(br *bufio.Reader, lim *limitReader, maxBody int64) (r Response, keep bool, err error) {
	lim.n = lim.max
	defer func() { lim.n = math.MaxInt64 }()
	for {
		if _, err := br.Peek(1); err != nil {
			return r, false, fmt.Errorf("read response: %w", lim.headerErr(err))
		}
		if r, contentLength, keep, ok := readSimple(br); ok {
			lim.n = math.MaxInt64 // the header block is read; the body is not bounded by it
			if contentLength > maxBody {
				return r, false, nil
			}
			if contentLength > 0 {
				r.Body = make([]byte, contentLength)
				if _, err := io.ReadFull(br, r.Body); err != nil {
					return Response{}, false, fmt.Errorf("read response body: %w", err)
				}
			}
			return r, keep, nil
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return r, false, fmt.Errorf("read response: %w", lim.headerErr(err))
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// Informational: no body (net/http reads none for 1xx); the answer follows.
			continue
		}
		lim.n = math.MaxInt64
		r.Status = resp.StatusCode
		r.RetryAfter = resp.Header.Get("Retry-After")
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// The app switched the connection to another protocol: what follows is not HTTP.
			return r, false, nil
		}
		// resp.Body is never closed: net/http's Close reads a body to its end (a chunked
		// one, or one of a declared length), however long it is. A body not read to its
		// end closes the connection instead.
		if resp.ContentLength > maxBody {
			return r, false, nil // as readSimple: not read, the connection cannot be reused
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
		if err != nil {
			return Response{Status: r.Status}, false, fmt.Errorf("read response body: %w", err)
		}
		if int64(len(b)) > maxBody {
			return r, false, nil // the rest is unread: the connection cannot be reused
		}
		r.Body = b
		return r, !resp.Close, nil
	}
}

// readSimple parses the answer nearly every app gives: HTTP/1.1, a status of 200 or more
// (not 204 or 304), header lines of a token, a colon and a value without control bytes (no
// folding), and a body framed by one Content-Length, with the whole header block already
// buffered. It consumes the header block and returns the body's length; the caller reads
// the body. For anything else it consumes nothing and returns ok=false, leaving the answer
// to net/http, which rejects what is malformed and frames what is unusual.
func readSimple(br *bufio.Reader) (r Response, contentLength int64, keep, ok bool) {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return r, 0, false, false
	}
	line, rest, _ := bytes.Cut(buf[:end+2], crlf)
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' || !validValue(line) {
		return r, 0, false, false
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return r, 0, false, false
		}
		r.Status = r.Status*10 + int(c-'0')
	}
	if r.Status < 200 || r.Status == http.StatusNoContent || r.Status == http.StatusNotModified {
		return r, 0, false, false
	}
	contentLength, keep = -1, true
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		name, value, found := bytes.Cut(line, colon)
		if !found || !validName(name) || !validValue(value) {
			return r, 0, false, false // folded or malformed: net/http decides
		}
		value = trimOWS(value)
		switch {
		case ascii.EqualFold(name, "Content-Length"):
			n, err := strconv.ParseUint(string(value), 10, 62)
			if contentLength >= 0 || err != nil {
				return r, 0, false, false
			}
			contentLength = int64(n)
		case ascii.EqualFold(name, "Transfer-Encoding"):
			return r, 0, false, false
		case ascii.EqualFold(name, "Connection"):
			for _, tok := range bytes.Split(value, comma) {
				if ascii.EqualFold(trimOWS(tok), "close") {
					keep = false
				}
			}
		case ascii.EqualFold(name, "Retry-After"):
			if r.RetryAfter == "" {
				r.RetryAfter = string(value)
			}
		}
	}
	if contentLength < 0 {
		return r, 0, false, false // body until close: net/http decides
	}
	_, _ = br.Discard(end + 4)
	return r, contentLength, keep, true
}

// validName reports whether b is an RFC 9110 token, as net/http requires of header names.
func validName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if bytes.IndexByte(tokenPunct, c) < 0 {
			return false
		}
	}
	return true
}

// validValue rejects control bytes but tab, so that no line break hides in a line (net/http
// reads a bare LF as the end of a line).
func validValue(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// trimOWS trims spaces and tabs, as net/http trims header values (and no other white
// space: bytes.TrimSpace would also trim Unicode spaces).
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
	colon    = []byte(":")
	comma    = []byte(",")

	tokenPunct = []byte("!#$%&'*+-.^_`|~")
)
