package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/appclient"
)

// poster sends one publish request (body, with an Idempotency-Key when key is not "") and
// returns the answer's status once the answer was read whole. Safe for concurrent use.
type poster func(ctx context.Context, body []byte, key string) (status int, err error)

// newLeanClient returns the publish scenario's default clients: the sidecar's own HTTP/1.1
// client for pushes (internal/appclient) with up to conns keep-alive connections to rawURL.
// The requesting goroutine writes each request with one write and reads the answer itself,
// as load generators such as wrk do. Go's net/http client spends ~40 µs more CPU per
// request here (a goroutine each for a connection's reads and writes, the handoffs between
// them, a header map per answer); on a 2-core box that CPU is taken from what is measured.
// netHTTPClient is the other kind, measured beside as a contender.
func newLeanClient(rawURL string, conns int) (poster, error) {
	c, err := appclient.New(appclient.Options{URL: rawURL, Conns: conns})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, body []byte, key string) (int, error) {
		r, err := c.Do(ctx, time.Now().Add(30*time.Second), func(w *bufio.Writer) {
			w.WriteString("Content-Type: application/octet-stream\r\n")
			if key != "" {
				w.WriteString("Idempotency-Key: ")
				w.WriteString(key)
				w.WriteString("\r\n")
			}
		}, body, 64<<10)
		return r.Status, err
	}, nil
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
