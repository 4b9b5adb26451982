package appclient

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestReadResponse checks the allocation-free parser against net/http.ReadResponse, the
// reference, on answers it handles and on those it must leave to net/http.
func TestReadResponse(t *testing.T) {
	const maxBody = 16
	cases := []struct {
		name, raw string
		simple    bool // readSimple must take it
	}{
		{"empty 200", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: x\r\n\r\n", true},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", true},
		{"dapr body", "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n{\"status\":\"RETRY\"}\n", true},
		{"retry-after", "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nRetry-After: 9\r\nContent-Length: 4\r\n\r\nbusy", true},
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok", true},
		{"body too large", "HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789", true},
		{"body at the limit", "HTTP/1.1 400 Bad Request\r\nContent-Length: 16\r\n\r\n0123456789012345", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", false},
		{"no length", "HTTP/1.1 500 Internal Server Error\r\n\r\nboom", false},
		{"http/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", false},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", false},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab", false},
		{"folded header", "HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\nContent-Length: 0\r\n\r\n", false},
		{"bad status", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, _, simple := readSimple(bufioFull(c.raw))
			if simple != c.simple {
				t.Fatalf("readSimple took it: %v, want %v", simple, c.simple)
			}
			got, gotKeep, gotErr := readResponse(bufioFull(c.raw), &limitReader{max: MaxHeaderBytes}, maxBody)

			// The reference: net/http parses, the body is read up to maxBody+1.
			var want Response
			wantKeep := false
			resp, err := http.ReadResponse(bufioFull(c.raw), nil)
			if err == nil {
				want.Status, want.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
				var b []byte
				b, err = io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
				if err == nil && int64(len(b)) <= maxBody {
					want.Body, wantKeep = b, !resp.Close
				}
			}
			if (gotErr != nil) != (err != nil) {
				t.Fatalf("error %v, net/http's %v", gotErr, err)
			}
			if err != nil {
				return
			}
			if len(want.Body) == 0 {
				want.Body = nil
			}
			if len(got.Body) == 0 {
				got.Body = nil
			}
			if got.Status != want.Status || got.RetryAfter != want.RetryAfter || string(got.Body) != string(want.Body) || gotKeep != wantKeep {
				t.Fatalf("got %d %q %q keep=%v, net/http %d %q %q keep=%v",
					got.Status, got.RetryAfter, got.Body, gotKeep, want.Status, want.RetryAfter, want.Body, wantKeep)
			}
		})
	}
}

// bufioFull returns a reader whose buffer already holds raw, as after the socket read.
func bufioFull(raw string) *bufio.Reader {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	_, _ = br.Peek(1)
	return br
}
