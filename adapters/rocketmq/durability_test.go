package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

func TestBrokerChecks(t *testing.T) {
	ok, risk := adapters.VerdictOK, adapters.VerdictAtRisk
	for _, tc := range []struct {
		name        string
		props       map[string]string
		flush, repl adapters.Verdict
		replValue   string
	}{
		{"defaults", map[string]string{"flushDiskType": "ASYNC_FLUSH", "brokerRole": "ASYNC_MASTER"}, risk, risk, "ASYNC_MASTER"},
		{"sync flush", map[string]string{"flushDiskType": "SYNC_FLUSH", "brokerRole": "ASYNC_MASTER"}, ok, ok, "ASYNC_MASTER"},
		{"sync master", map[string]string{"flushDiskType": "ASYNC_FLUSH", "brokerRole": "SYNC_MASTER"}, ok, ok, "SYNC_MASTER"},
		{"dledger", map[string]string{"flushDiskType": "ASYNC_FLUSH", "brokerRole": "ASYNC_MASTER", "enableDLegerCommitLog": "true"}, ok, ok, "DLedger (Raft majority)"},
		{"controller, one in sync", map[string]string{"flushDiskType": "ASYNC_FLUSH", "enableControllerMode": "true", "minInSyncReplicas": "1", "allAckInSyncStateSet": "false"},
			risk, risk, "controller mode, minInSyncReplicas=1, allAckInSyncStateSet=false"},
		{"controller, two in sync", map[string]string{"flushDiskType": "ASYNC_FLUSH", "enableControllerMode": "true", "minInSyncReplicas": "2", "allAckInSyncStateSet": "true"},
			ok, ok, "controller mode, minInSyncReplicas=2, allAckInSyncStateSet=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := brokerChecks("broker-a", "127.0.0.1:10911", tc.props)
			if len(got) != 2 || got[0].Check != "flush_disk_type" || got[1].Check != "replication" {
				t.Fatalf("checks = %+v", got)
			}
			f, r := got[0], got[1]
			if f.Verdict != tc.flush || f.Value != tc.props["flushDiskType"] || r.Verdict != tc.repl || r.Value != tc.replValue {
				t.Errorf("flush %q %s, replication %q %s; want %s, %q %s", f.Value, f.Verdict, r.Value, r.Verdict, tc.flush, tc.replValue, tc.repl)
			}
			for _, c := range got {
				if c.Target != "broker-a" || (c.Verdict == risk) != (c.Fix != "") {
					t.Errorf("%+v: target broker-a, a fix exactly when at risk", c)
				}
			}
		})
	}
}

func TestParseProperties(t *testing.T) {
	got := parseProperties([]byte("flushDiskType=SYNC_FLUSH\n#c\nbrokerRole = ASYNC_MASTER\r\nmessageDelayLevel=1s 5s\n\nnamesrvAddr=a:1;b:2\n"))
	want := map[string]string{"flushDiskType": "SYNC_FLUSH", "brokerRole": "ASYNC_MASTER", "messageDelayLevel": "1s 5s", "namesrvAddr": "a:1;b:2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parseProperties = %v, want %v", got, want)
	}
}

// CheckDurability asks the name server for the route, then the master broker of the route
// for its configuration (GET_BROKER_CONFIG, code 26), and names the broker.
func TestCheckDurabilityRemoting(t *testing.T) {
	broker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	go fakeRemoting(broker, func(code int) (int, string, []byte) {
		if code != reqGetBrokerConfig {
			return 1, "unexpected", nil
		}
		return resSuccess, "", []byte("brokerRole=ASYNC_MASTER\nflushDiskType=SYNC_FLUSH\n")
	})
	ns, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	route := fmt.Sprintf(`{"brokerDatas":[{"brokerAddrs":{0:"%s"},"brokerName":"broker-x","cluster":"c"}],"queueDatas":[]}`, broker.Addr())
	go fakeRemoting(ns, func(code int) (int, string, []byte) {
		if code != reqGetRouteInfoByTopic {
			return 1, "unexpected", nil
		}
		return resSuccess, "", []byte(route)
	})
	checks, err := CheckDurability(context.Background(), DurabilityParams{Nameservers: []string{ns.Addr().String()}, Topics: []string{"t"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 2 || checks[0].Target != "broker-x" || checks[0].Value != "SYNC_FLUSH" || checks[0].Verdict != adapters.VerdictOK ||
		!strings.Contains(checks[0].Source, broker.Addr().String()) {
		t.Errorf("checks = %+v", checks)
	}

	// A topic the name server has no route for: unknown, with the command that creates it.
	nr, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer nr.Close()
	go fakeNameServer(nr, resTopicNotExist, "No topic route info")
	checks, err = CheckDurability(context.Background(), DurabilityParams{Nameservers: []string{nr.Addr().String()}, Topics: []string{"t"}})
	if err != nil || len(checks) != 1 || checks[0].Verdict != adapters.VerdictUnknown || !strings.Contains(checks[0].Fix, "updateTopic") {
		t.Errorf("no route: %+v, %v", checks, err)
	}
}

// A name server that accepts but never answers: the check fails within its timeout.
func TestCheckDurabilityUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	_, err = CheckDurability(context.Background(), DurabilityParams{Nameservers: []string{l.Addr().String()}, Topics: []string{"t"}, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v with a 300ms timeout", took)
	}
}
