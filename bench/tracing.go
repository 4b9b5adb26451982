package main

// The tracing scenario (-scenario tracing, issue 18): the partition scenario's workload and
// sidecar (ordering partition, max_inflight 64, dedup on), once with tracing off and once
// with tracing.enabled and every span sampled (OTEL_TRACES_SAMPLER=always_on), alternating
// run by run; the instant app and the app sleeping 0.2 ms by default (-apps). The tracing
// sidecar exports its spans over OTLP/HTTP to a receiver in this process that counts them
// and discards them, so the sidecar pays its whole export (batching, encoding, the HTTP
// request) and the receiver's cost lands in the bench's own CPU. The ratios compare
// tracing on with off. Each run prints the spans received; every message is pushed once,
// so all exported means 2 per message (its consumer span and its push span), counted after
// the sidecar stopped (its shutdown flushes the last batch).

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/encoding/protowire"
)

// tracingContenders returns the sidecar with tracing off and on (only those whose name
// contains only, when set) and stops the span receiver when stop is called.
func tracingContenders(only string) (cs []contender, stop func(), err error) {
	sink, err := newOTLPSink()
	if err != nil {
		return nil, nil, err
	}
	tracingOn := fmt.Sprintf("tracing: {enabled: true, endpoint: %q}\n", sink.url)
	on := sidecarContender("mqsidecar, tracing on (100%)", "sidecar-tracing", "partition", tracingOn)
	on.env = []string{"OTEL_TRACES_SAMPLER=always_on"}
	on.sink = sink
	cs = []contender{sidecarContender("mqsidecar, tracing off", "sidecar-off", "partition", ""), on}
	// BENCH_BASELINE_BIN: another build with tracing on, alternating with this one (a change
	// to tracing measured against main in the same minutes).
	if b := os.Getenv("BENCH_BASELINE_BIN"); b != "" {
		base := contender{name: "mqsidecar@baseline, tracing on", short: "baseline-tracing", env: on.env, sink: sink,
			cmd: func(_, brokers, appURL, rdir string) *exec.Cmd {
				return sidecarCmd(b, "partition", brokers, appURL, rdir, tracingOn)
			}}
		cs = append(cs, base)
	}
	cs, err = onlyContenders(cs, only)
	if err != nil {
		sink.close()
		return nil, nil, err
	}
	return cs, sink.close, nil
}

// otlpSink is an OTLP/HTTP trace receiver that answers every export with success and keeps
// nothing but the number of spans.
type otlpSink struct {
	url   string
	srv   *http.Server
	spans atomic.Int64
	mu    sync.Mutex
	errs  []string
}

func newOTLPSink() (*otlpSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &otlpSink{url: "http://" + ln.Addr().String()}
	s.srv = &http.Server{Handler: s}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *otlpSink) close() { _ = s.srv.Close() }

func (s *otlpSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err == nil && (r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Encoding") != "") {
		err = fmt.Errorf("%s %s (Content-Encoding %q): want an uncompressed POST /v1/traces", r.Method, r.URL.Path, r.Header.Get("Content-Encoding"))
	}
	var n int
	if err == nil {
		n, err = countSpans(body)
	}
	if err != nil {
		s.mu.Lock()
		s.errs = append(s.errs, err.Error())
		s.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.spans.Add(int64(n))
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK) // an empty ExportTraceServiceResponse: all accepted
}

// take returns the spans received and the receiver's errors since the last take.
func (s *otlpSink) take() (int64, []string) {
	s.mu.Lock()
	errs := s.errs
	s.errs = nil
	s.mu.Unlock()
	return s.spans.Swap(0), errs
}

// countSpans counts the spans of an ExportTraceServiceRequest: resource_spans (1) →
// scope_spans (2) → spans (2).
func countSpans(req []byte) (int, error) {
	n := 0
	err := eachField(req, 1, func(rs []byte) error {
		return eachField(rs, 2, func(ss []byte) error {
			return eachField(ss, 2, func([]byte) error { n++; return nil })
		})
	})
	return n, err
}

// eachField calls f with the content of every length-delimited field num of message b.
func eachField(b []byte, num protowire.Number, f func([]byte) error) error {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return protowire.ParseError(l)
			}
			if err := f(v); err != nil {
				return err
			}
			b = b[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
	}
	return nil
}
