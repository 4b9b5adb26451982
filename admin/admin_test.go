package admin

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// /readyz carries the details line in both answers, and readiness does not depend on it.
func TestReadyzDetails(t *testing.T) {
	var notReady atomic.Pointer[error]
	s := New("127.0.0.1:0", prometheus.NewRegistry(), func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}, slog.New(slog.DiscardHandler))
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || body != "ready\n" {
		t.Errorf("without details: %d %q", code, body)
	}
	s.SetDetails(func() string { return "durability: at risk: min_insync_replicas orders=1 (at risk)" })
	if code, body := get(); code != 200 || body != "ready\ndurability: at risk: min_insync_replicas orders=1 (at risk)\n" {
		t.Errorf("ready with details: %d %q", code, body)
	}
	e := errors.New("kafka: not connected yet")
	notReady.Store(&e)
	if code, body := get(); code != 503 || body != "not ready: kafka: not connected yet\ndurability: at risk: min_insync_replicas orders=1 (at risk)\n" {
		t.Errorf("not ready with details: %d %q", code, body)
	}
}
