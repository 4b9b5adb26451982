package ackgate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/ascii"
)

// pool is a minimal HTTP/1.1 keep-alive client for one origin, the local app. net/http's
// Transport hands every request to two goroutines per connection (a write loop and a read
// loop); on the push path, which is every message, that costs more CPU than the sidecar's
// own work. Here the pushing goroutine writes the request and reads the response itself:
// one write and (usually) one read system call per push. The answer nearly every app gives
// (HTTP/1.1, a status of 200 or more other than 204 and 304, unfolded header lines, one
// Content-Length, the header block already buffered) is parsed by readSimple without
// net/http's allocations; anything else (chunked, HTTP/1.0, a body until close, 1xx,
// 204/304, folded or odd headers) goes to net/http.ReadResponse, so framing there follows
// the standard library (readResponse; TestReadResponse checks that both parsers give the
// same answers).
type pool struct {
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
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	ctx      context.Context // the context watched for cancellation (see watch)
	stop     func() bool     // stops watching ctx
}

func newPool(rawURL string, size int) (*pool, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("app url %q: scheme must be http or https", rawURL)
	}
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	path := u.RequestURI()
	p := &pool{
		scheme: u.Scheme, host: host, path: path, hostHeader: u.Host,
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		idle:        make(chan *pconn, size),
		idleTimeout: 4 * time.Second,
		checkAfter:  500 * time.Millisecond,
	}
	if u.Scheme == "https" {
		p.tlsConfig = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return p, nil
}

// get returns an idle connection or dials a new one by the deadline.
func (p *pool) get(ctx context.Context, deadline time.Time) (*pconn, error) {
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
	return &pconn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}, nil
}

// alive reports whether the app has not closed pc while it sat idle. It peeks at the
// socket without blocking: EOF or unexpected bytes mean the connection is unusable.
func alive(pc *pconn) bool {
	if pc.br.Buffered() > 0 {
		return false // bytes nobody asked for: the framing is lost
	}
	sc, ok := pc.c.(syscall.Conn)
	if !ok {
		return true // TLS: no cheap check; a failure becomes a counted retry
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	_ = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Only "would block" means open and quiet; EOF (no error, 0 bytes), data or any
		// other error means unusable.
		ok = errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK)
		return true // never wait for readability
	})
	return ok
}

func (p *pool) put(pc *pconn) {
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

func (p *pool) close() {
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

// response is what the pusher needs of an answer.
type response struct {
	status     int
	retryAfter string
	body       []byte // at most maxBody bytes; nil when larger
}

// do sends one POST. writeHeaders writes the header lines (each ending in CRLF). The
// deadline bounds the whole exchange; ctx cancellation aborts it. A failure is never
// retried here: the app may have read the request, so a second push must be a counted,
// flagged attempt of the gate.
func (p *pool) do(ctx context.Context, deadline time.Time, writeHeaders func(*bufio.Writer), body []byte, maxBody int64) (r response, err error) {
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
	r, keep, err := readResponse(pc.br, maxBody)
	ok = err == nil && keep
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

// readResponse reads one answer. The common case is parsed by readSimple without
// net/http's allocations; everything else goes to net/http.ReadResponse. keep reports
// whether the connection may carry another request.
func readResponse(br *bufio.Reader, maxBody int64) (r response, keep bool, err error) {
	if _, err := br.Peek(1); err != nil {
		return r, false, fmt.Errorf("read response: %w", err)
	}
	if r, keep, ok, err := readSimple(br, maxBody); ok {
		return r, keep, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return r, false, fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	r.retryAfter = resp.Header.Get("Retry-After")
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return r, false, fmt.Errorf("read response body: %w", err)
	}
	if int64(len(b)) > maxBody {
		return r, false, nil // the rest is unread: the connection cannot be reused
	}
	r.body = b
	return r, !resp.Close, nil
}

// readSimple parses the answer nearly every app gives: HTTP/1.1, a status of 200 or more
// (not 204 or 304), header lines without folding, and a body framed by one Content-Length,
// with the whole header block already buffered. For anything else it consumes nothing and
// returns ok=false. A body larger than maxBody is not read (r.body nil, keep false), as
// with readResponse.
func readSimple(br *bufio.Reader, maxBody int64) (r response, keep, ok bool, err error) {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return r, false, false, nil
	}
	line, rest, _ := bytes.Cut(buf[:end+2], crlf)
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return r, false, false, nil
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return r, false, false, nil
		}
		r.status = r.status*10 + int(c-'0')
	}
	if r.status < 200 || r.status == http.StatusNoContent || r.status == http.StatusNotModified {
		return r, false, false, nil
	}
	contentLength, keep := int64(-1), true
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		name, value, found := bytes.Cut(line, colon)
		if !found || len(name) == 0 || name[0] == ' ' || name[0] == '\t' {
			return r, false, false, nil // folded or malformed: net/http decides
		}
		value = bytes.TrimSpace(value)
		switch {
		case ascii.EqualFold(name, "Content-Length"):
			n, err := strconv.ParseUint(string(value), 10, 62)
			if contentLength >= 0 || err != nil {
				return r, false, false, nil
			}
			contentLength = int64(n)
		case ascii.EqualFold(name, "Transfer-Encoding"):
			return r, false, false, nil
		case ascii.EqualFold(name, "Connection"):
			for _, tok := range bytes.Split(value, comma) {
				if ascii.EqualFold(bytes.TrimSpace(tok), "close") {
					keep = false
				}
			}
		case ascii.EqualFold(name, "Retry-After"):
			if r.retryAfter == "" {
				r.retryAfter = string(value)
			}
		}
	}
	if contentLength < 0 {
		return r, false, false, nil // body until close: net/http decides
	}
	_, _ = br.Discard(end + 4)
	if contentLength > maxBody {
		return r, false, true, nil
	}
	if contentLength > 0 {
		r.body = make([]byte, contentLength)
		if _, err := io.ReadFull(br, r.body); err != nil {
			return response{}, false, true, fmt.Errorf("read response body: %w", err)
		}
	}
	return r, keep, true, nil
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
	colon    = []byte(":")
	comma    = []byte(",")
)
