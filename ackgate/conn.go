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
	"syscall"
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

// get returns an idle connection (reused=true) or dials a new one.
func (p *pool) get(ctx context.Context) (pc *pconn, reused bool, err error) {
	for {
		select {
		case pc := <-p.idle:
			idle := time.Since(pc.lastUsed)
			if idle < p.idleTimeout && (idle < p.checkAfter || alive(pc)) {
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

// do sends one POST. writeHeaders writes the header lines (each ending in CRLF). The
// deadline bounds the whole exchange; ctx cancellation aborts it. A failure is never
// retried here: the app may have read the request, so a second push must be a counted,
// flagged attempt of the gate.
func (p *pool) do(ctx context.Context, deadline time.Time, writeHeaders func(*bufio.Writer), body []byte, maxBody int64) (r response, err error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	pc, _, err := p.get(dctx)
	if err != nil {
		return r, err
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
	writeHeaders(bw)
	bw.WriteString("\r\n")
	bw.Write(body)
	if err := bw.Flush(); err != nil {
		return r, err
	}
	resp, err := http.ReadResponse(pc.br, nil)
	if err != nil {
		return r, fmt.Errorf("read response: %w", err)
	}
	r.status = resp.StatusCode
	r.retryAfter = resp.Header.Get("Retry-After")
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		resp.Body.Close()
		return r, fmt.Errorf("read response body: %w", err)
	}
	if int64(len(b)) <= maxBody {
		r.body = b
		ok = !resp.Close
	}
	resp.Body.Close()
	return r, nil
}
