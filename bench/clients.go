package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// poster sends one publish request (body, with an Idempotency-Key when key is not "") and
// returns the answer's status once the answer was read whole. Safe for concurrent use.
type poster func(ctx context.Context, body []byte, key string) (status int, err error)

// newLeanClient returns the publish scenario's default clients: up to conns keep-alive
// HTTP/1.1 connections to rawURL, one request on a connection at a time, each request
// written with one write and each answer read whole (status line, headers, a
// Content-Length body), as load generators such as wrk do. Go's net/http client spends
// ~40 µs of CPU per request here (a goroutine each for a connection's reads and writes, the
// handoffs between them, a header map per answer); on a 2-core box that CPU is taken from
// what is measured. netHTTPClient is the other kind, measured beside as a contender.
func newLeanClient(rawURL string, conns int) (poster, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("lean client: %s: only http:// is spoken", rawURL)
	}
	head := "POST " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nContent-Type: application/octet-stream\r\nContent-Length: "
	pool := make(chan *leanConn, conns)
	for range conns {
		pool <- nil // dialled on first use
	}
	return func(ctx context.Context, body []byte, key string) (int, error) {
		var c *leanConn
		select {
		case c = <-pool:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if c == nil {
			nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
			if err != nil {
				pool <- nil
				return 0, err
			}
			c = &leanConn{nc: nc, r: bufio.NewReaderSize(nc, 4096)}
		}
		status, err := c.post(head, body, key)
		if err != nil {
			c.nc.Close() // the connection's state is unknown: the next request dials
			c = nil
		}
		pool <- c
		return status, err
	}, nil
}

// leanConn is one connection of newLeanClient.
type leanConn struct {
	nc  net.Conn
	r   *bufio.Reader
	buf []byte // the request being written
}

func (c *leanConn) post(head string, body []byte, key string) (int, error) {
	c.buf = append(c.buf[:0], head...)
	c.buf = strconv.AppendInt(c.buf, int64(len(body)), 10)
	if key != "" {
		c.buf = append(c.buf, "\r\nIdempotency-Key: "...)
		c.buf = append(c.buf, key...)
	}
	c.buf = append(c.buf, "\r\n\r\n"...)
	c.buf = append(c.buf, body...)
	_ = c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.nc.Write(c.buf); err != nil {
		return 0, err
	}
	return readAnswer(c.r)
}

// readAnswer reads one HTTP/1.1 answer from r, its body discarded, and returns its status.
func readAnswer(r *bufio.Reader) (int, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, fmt.Errorf("lean client: bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("lean client: bad status line %q", line)
	}
	length, chunked := -1, false
	for {
		if line, err = r.ReadSlice('\n'); err != nil {
			return 0, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		switch {
		case !ok:
			return 0, fmt.Errorf("lean client: bad header line %q", line)
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil || length < 0 {
				return 0, fmt.Errorf("lean client: bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			if !bytes.EqualFold(bytes.TrimSpace(value), []byte("chunked")) {
				return 0, fmt.Errorf("lean client: Transfer-Encoding %q is not spoken", bytes.TrimSpace(value))
			}
			chunked = true
		}
	}
	switch {
	case status == http.StatusNoContent || status == http.StatusNotModified || status/100 == 1:
		return status, nil // no body (RFC 9110, section 6.4.1)
	case chunked:
		return status, discardChunks(r)
	case length < 0:
		return 0, errors.New("lean client: an answer without Content-Length")
	}
	_, err = r.Discard(length)
	return status, err
}

// discardChunks reads a chunked body (RFC 9112, section 7.1) to its end, trailers included.
func discardChunks(r *bufio.Reader) error {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseUint(string(bytes.TrimSpace(size)), 16, 31)
		if err != nil {
			return fmt.Errorf("lean client: bad chunk size %q", line)
		}
		if n == 0 {
			for { // trailers, then the empty line
				if line, err = r.ReadSlice('\n'); err != nil || len(bytes.TrimRight(line, "\r\n")) == 0 {
					return err
				}
			}
		}
		if _, err := r.Discard(int(n) + 2); err != nil { // the chunk and its CRLF
			return err
		}
	}
}

// netHTTPClient posts with Go's net/http client (as a Go app would), up to pubClients
// connections.
func netHTTPClient(rawURL string) poster {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: pubClients, MaxConnsPerHost: pubClients}}
	return func(ctx context.Context, body []byte, key string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
}
