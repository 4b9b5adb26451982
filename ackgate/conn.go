package ackgate

import (
	"bufio"
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
	"time"
)

// pool is a minimal HTTP/1.1 keep-alive client for one origin, the local app. net/http's
// Transport hands every request to two goroutines per connection (a write loop and a read
// loop); on the push path, which is every message, that costs more CPU than the sidecar's
// own work. Here the pushing goroutine writes the request and reads the response itself:
// one write and (usually) one read system call per push. Responses are parsed by
// net/http.ReadResponse, so framing (Content-Length, chunked, Connection: close) follows
// the standard library.
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
	mu          sync.Mutex
	closed      bool
}

type pconn struct {
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
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
	}
	if u.Scheme == "https" {
		p.tlsConfig = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return p, nil
}

// get returns an idle connection (reused=true) or dials a new one.
func (p *pool) get(ctx context.Context) (pc *pconn, reused bool, err error) {
	for {
		select {
		case pc := <-p.idle:
			if time.Since(pc.lastUsed) < p.idleTimeout {
				return pc, true, nil
			}
			pc.c.Close()
			continue
		default:
		}
		break
	}
	c, err := p.dialer.DialContext(ctx, "tcp", p.host)
	if err != nil {
		return nil, false, err
	}
	if p.tlsConfig != nil {
		tc := tls.Client(c, p.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, false, err
		}
		c = tc
	}
	return &pconn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}, false, nil
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
	pc.c.Close()
}

func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	for {
		select {
		case pc := <-p.idle:
			pc.c.Close()
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

// do sends one POST. writeHeaders writes the header lines (each ending in CRLF); resent is
// true when the request is written a second time (see below). The deadline bounds the
// whole exchange; ctx cancellation aborts it.
func (p *pool) do(ctx context.Context, deadline time.Time, writeHeaders func(w *bufio.Writer, resent bool), body []byte, maxBody int64) (response, error) {
	for try := 0; ; try++ {
		resp, reusedStale, err := p.try(ctx, deadline, writeHeaders, try > 0, body, maxBody)
		// A reused connection that closed without a byte of answer was most likely closed
		// by the app while idle, before our request arrived: retry once on a fresh one.
		// The app may also have read the request and died before answering, so the resent
		// request says it may be a redelivery.
		if err != nil && reusedStale && try == 0 && ctx.Err() == nil && time.Now().Before(deadline) {
			continue
		}
		return resp, err
	}
}

func (p *pool) try(ctx context.Context, deadline time.Time, writeHeaders func(*bufio.Writer, bool), resent bool, body []byte, maxBody int64) (r response, stale bool, err error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	pc, reused, err := p.get(dctx)
	if err != nil {
		return r, false, err
	}
	_ = pc.c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	ok := false
	defer func() {
		if ok {
			_ = pc.c.SetDeadline(time.Time{})
			p.put(pc)
		} else {
			pc.c.Close()
		}
	}()

	bw := pc.bw
	bw.WriteString("POST ")
	bw.WriteString(p.path)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(p.hostHeader)
	bw.WriteString("\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n")
	writeHeaders(bw, resent)
	bw.WriteString("\r\n")
	bw.Write(body)
	if err := bw.Flush(); err != nil {
		return r, reused, err
	}
	if reused {
		// Peek distinguishes "closed before answering" (stale) from a broken answer.
		if _, err := pc.br.Peek(1); err != nil {
			return r, isClosed(err), err
		}
	}
	resp, err := http.ReadResponse(pc.br, nil)
	if err != nil {
		return r, false, fmt.Errorf("read response: %w", err)
	}
	r.status = resp.StatusCode
	r.retryAfter = resp.Header.Get("Retry-After")
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		resp.Body.Close()
		return r, false, fmt.Errorf("read response body: %w", err)
	}
	if int64(len(b)) <= maxBody {
		r.body = b
		ok = !resp.Close
	}
	resp.Body.Close()
	return r, false, nil
}

func isClosed(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true // EOF, connection reset, broken pipe
}
