package rabbitmq

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

func TestQueueChecks(t *testing.T) {
	ok, risk, unknown := adapters.VerdictOK, adapters.VerdictAtRisk, adapters.VerdictUnknown
	for _, tc := range []struct {
		name                string
		q                   *mgmtQueue
		durable, typ        adapters.Verdict
		durableValue, value string
	}{
		{"no management API", nil, unknown, unknown, "", ""},
		{"quorum", &mgmtQueue{Durable: true, Type: "quorum"}, ok, ok, "true", "quorum"},
		{"durable classic", &mgmtQueue{Durable: true, Type: "classic"}, ok, risk, "true", "classic"},
		{"transient classic", &mgmtQueue{Durable: false, Type: "classic"}, risk, risk, "false", "classic"},
		{"mirrored classic", &mgmtQueue{Durable: true, Type: "classic", Policy: "ha", Effective: map[string]any{"ha-mode": "all"}},
			ok, risk, "true", "classic, mirrored (ha-mode all, policy ha)"},
		{"stream", &mgmtQueue{Durable: true, Type: "stream"}, ok, ok, "true", "stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := queueChecks("orders", tc.q, nil)
			if len(got) != 2 || got[0].Check != "queue_durable" || got[1].Check != "queue_type" {
				t.Fatalf("checks = %+v", got)
			}
			if got[0].Verdict != tc.durable || got[0].Value != tc.durableValue || got[1].Verdict != tc.typ || got[1].Value != tc.value {
				t.Errorf("durable %q %s, type %q %s; want %q %s, %q %s", got[0].Value, got[0].Verdict, got[1].Value, got[1].Verdict,
					tc.durableValue, tc.durable, tc.value, tc.typ)
			}
			for _, c := range got {
				if (c.Verdict != ok) != (c.Fix != "") {
					t.Errorf("%+v: a fix exactly when not ok", c)
				}
			}
		})
	}
	if got := queueChecks("orders", nil, errors.New("401 Unauthorized")); !strings.Contains(got[0].Fix, "401") {
		t.Errorf("a management API failure should be the reason: %+v", got[0])
	}
}

func TestNackChecks(t *testing.T) {
	safe := &mgmtQueue{Durable: true, Type: "quorum", Arguments: map[string]any{"x-dead-letter-exchange": "dlx"},
		Policy: "dl", Effective: map[string]any{"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}}
	got := nackChecks("orders", "/", safe, nil)
	if got[0].Value != "dlx" || got[0].Source != "queue argument x-dead-letter-exchange" || got[0].Verdict != adapters.VerdictOK ||
		got[1].Value != "at-least-once" || got[1].Source != "policy dl" || got[1].Verdict != adapters.VerdictOK {
		t.Errorf("safe nack: %+v", got)
	}
	got = nackChecks("orders", "/", &mgmtQueue{Durable: true, Type: "classic"}, nil)
	if got[0].Verdict != adapters.VerdictAtRisk || got[0].Value != "none" || got[1].Verdict != adapters.VerdictAtRisk || got[1].Value != "at-most-once" {
		t.Errorf("classic without a DLX: %+v", got)
	}
	// at-least-once needs overflow reject-publish (else the broker refuses it silently).
	noOverflow := &mgmtQueue{Durable: true, Type: "quorum", Arguments: map[string]any{"x-dead-letter-exchange": "dlx", "x-dead-letter-strategy": "at-least-once"}}
	if got := nackChecks("orders", "/", noOverflow, nil); got[1].Verdict != adapters.VerdictAtRisk {
		t.Errorf("at-least-once without reject-publish: %+v", got[1])
	}
}

func TestGetQueueManagementAPI(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, _ := r.BasicAuth(); u != "mon" || p != "pw" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		if r.URL.EscapedPath() != "/api/queues/%2F/a%20queue" {
			http.Error(w, "path "+r.URL.EscapedPath(), http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte(`{"name":"a queue","durable":true,"type":"quorum","arguments":{"x-queue-type":"quorum"},"policy":null}`))
	}))
	defer srv.Close()
	p := DurabilityParams{Queue: "a queue", ManagementURL: srv.URL + "/", ManagementUser: "mon", ManagementPassword: "pw"}
	q, err := getQueue(context.Background(), p, "/", time.Second)
	if err != nil || !q.Durable || q.Type != "quorum" {
		t.Fatalf("getQueue = %+v, %v", q, err)
	}
	p.ManagementPassword = "wrong"
	if _, err := getQueue(context.Background(), p, "/", time.Second); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong password: %v", err)
	}
}

// A broker that accepts connections and never answers: the check fails within its timeout.
func TestCheckDurabilitySilentBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	_, err = CheckDurability(context.Background(), DurabilityParams{URL: "amqp://guest:guest@" + l.Addr().String() + "/", Queue: "q", Timeout: 500 * time.Millisecond})
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if strings.Contains(err.Error(), "guest@") {
		t.Errorf("the error shows the URL's credentials: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v with a 500ms timeout", took)
	}
}
