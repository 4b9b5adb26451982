package rocketmq

import (
	"reflect"
	"testing"
	"time"
)

func TestMasterAddrs(t *testing.T) {
	body := []byte(`{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911",1:"127.0.0.1:10921"},"brokerName":"b1","cluster":"c"},` +
		`{"brokerAddrs":{"0":"10.0.0.2:10911"},"brokerName":"b2","cluster":"c"},{"brokerAddrs":{1:"10.0.0.3:1"},"brokerName":"slaveonly"}],"queueDatas":[]}`)
	got := masterAddrs(body)
	want := []string{"127.0.0.1:10911", "10.0.0.2:10911"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := masterAddrs([]byte(`{}`)); len(got) != 0 {
		t.Fatalf("empty route: %v", got)
	}
}

func TestProbeUnreachableNameServer(t *testing.T) {
	if err := probe([]string{"127.0.0.1:1"}, "t", 200*time.Millisecond); err == nil {
		t.Fatal("probe succeeded against a closed port")
	}
}

func TestMasterAddrByName(t *testing.T) {
	body := []byte(`{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:20911"},"brokerName":"broker-a","cluster":"c"},` +
		`{"brokerAddrs":{1:"10.0.0.3:10911",0:"10.0.0.2:10911"},"brokerName":"broker-b","cluster":"c"},` +
		`{"brokerAddrs":{1:"10.0.0.9:10911"},"brokerName":"broker-c","cluster":"c"}],"queueDatas":[]}`)
	got := masterAddrByName(body)
	want := map[string]string{"broker-a": "127.0.0.1:20911", "broker-b": "10.0.0.2:10911"}
	if len(got) != len(want) || got["broker-a"] != want["broker-a"] || got["broker-b"] != want["broker-b"] {
		t.Errorf("masterAddrByName = %v, want %v", got, want)
	}
}
