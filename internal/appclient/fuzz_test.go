package appclient

import (
	"bufio"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
)

// FuzzReadResponse is a differential test of readResponse (the fast parser, the fallback to
// net/http, the informational-answer loop and the header limit) against the reference: a
// loop over net/http.ReadResponse doing what net/http's Transport does around it (skip 1xx
// but 101, bound the header bytes of all of them together, then read the body). For any
// bytes the app may send, delivered in reads of any size, both must agree on failure or
// not, the status, Retry-After and the body, and on whether the connection may be reused;
// when it may, both must have consumed exactly the same bytes (the next answer starts at
// the same place). A disagreement there is a desynchronised connection: one push reading
// another's answer.
//
// `go test ./internal/appclient/` runs the seed corpus below (and any crashers saved under
// testdata/fuzz/FuzzReadResponse) as a normal test; `make test` also fuzzes it for 20 s. A
// longer run, by hand:
//
//	go test ./internal/appclient/ -run '^$' -fuzz '^FuzzReadResponse$' -fuzztime 10m
func FuzzReadResponse(f *testing.F) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	seeds := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: x\r\n\r\n",
		"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n{\"status\":\"RETRY\"}\n",
		"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nRetry-After: 9\r\nContent-Length: 4\r\n\r\nbusy",
		"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nConnection: close\u00a0\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nConnection: \tclose\t\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789",
		"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 40\r\n\r\n0123456789",
		"HTTP/1.1 400 Bad Request\r\nContent-Length: 16\r\n\r\n0123456789012345",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n0\r\n\r\n",
		"HTTP/1.1 500 Internal Server Error\r\n\r\nboom",
		"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nContent-Length: 4611686018427387904\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\n Content-Length: 0\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 5\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\nContent-Length: 3\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent Length: 5\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length : 5\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"this is not http\r\n\r\n",
		"",
		"HTTP/1.1 100 Continue\r\n\r\n" + ok,
		"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + ok,
		"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 199 X\r\n\r\n" + ok,
		"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n" + ok,
		"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n" + ok,
		"HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 600) + "\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 103 Early Hints\r\nX-Big: " + strings.Repeat("a", 200) + "\r\n\r\nHTTP/1.1 103 Early Hints\r\nX-Big: " + strings.Repeat("a", 200) + "\r\n\r\n" + ok,
		"HTTP/1.1 200 OK\r\nContent-Length: 600\r\n\r\n" + strings.Repeat("b", 600),
	}
	for _, s := range seeds {
		for _, chunk := range []uint16{0, 1, 7} {
			f.Add([]byte(s), chunk)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, chunk uint16) {
		const maxBody, maxHeader = 16, 512
		src := &chunkReader{b: raw, chunk: int(chunk)}
		lim := &limitReader{r: src, n: math.MaxInt64, max: maxHeader}
		br := bufio.NewReaderSize(lim, 256)
		got, gotKeep, gotErr := readResponse(br, lim, maxBody)
		gotPos := src.off - br.Buffered()

		rsrc := &chunkReader{b: raw, chunk: int(chunk)}
		rlim := &limitReader{r: rsrc, n: math.MaxInt64, max: maxHeader}
		rbr := bufio.NewReaderSize(rlim, 256)
		want, wantKeep, wantErr := referenceReadResponse(rbr, rlim, maxBody)
		wantPos := rsrc.off - rbr.Buffered()

		if (gotErr != nil) != (wantErr != nil) {
			t.Fatalf("error %v, net/http's %v", gotErr, wantErr)
		}
		if gotErr != nil {
			if gotKeep {
				t.Fatal("keep after an error")
			}
			return
		}
		if got.Status != want.Status || got.RetryAfter != want.RetryAfter || string(got.Body) != string(want.Body) || gotKeep != wantKeep {
			t.Fatalf("got %d %q %q keep=%v, net/http %d %q %q keep=%v",
				got.Status, got.RetryAfter, got.Body, gotKeep, want.Status, want.RetryAfter, want.Body, wantKeep)
		}
		if gotKeep && gotPos != wantPos {
			t.Fatalf("connection kept, but the answer ended at byte %d, net/http's at %d", gotPos, wantPos)
		}
	})
}

// referenceReadResponse is what net/http's Transport does with a connection's bytes,
// written out: ReadResponse in a loop that skips informational answers but 101, with the
// header bytes of all of them bounded together (Transport.readLoop and readResponse); then
// the body, which the pusher reads up to maxBody, unless it is declared longer.
func referenceReadResponse(br *bufio.Reader, lim *limitReader, maxBody int64) (r Response, keep bool, err error) {
	lim.n = lim.max
	for {
		if _, err := br.Peek(1); err != nil {
			return r, false, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return r, false, err
		}
		if resp.StatusCode/100 == 1 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		lim.n = math.MaxInt64
		r.Status, r.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
		if resp.StatusCode == http.StatusSwitchingProtocols || resp.ContentLength > maxBody {
			return r, false, nil
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
		if err != nil {
			return r, false, err
		}
		if int64(len(b)) > maxBody {
			return r, false, nil
		}
		if len(b) > 0 {
			r.Body = b
		}
		return r, !resp.Close, nil
	}
}

// chunkReader hands out b in reads of at most chunk bytes (0: all that is asked for), as a
// socket hands out what has arrived; off counts the bytes handed out.
type chunkReader struct {
	b     []byte
	off   int
	chunk int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.off >= len(c.b) {
		return 0, io.EOF
	}
	if c.chunk > 0 && len(p) > c.chunk {
		p = p[:c.chunk]
	}
	n := copy(p, c.b[c.off:])
	c.off += n
	return n, nil
}
