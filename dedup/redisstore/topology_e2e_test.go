//go:build e2e

package redisstore

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/storetest"
)

// A Redis Cluster of two masters, each with half of the slots: the suite passes with the
// IDs spread over both, through a cluster client found from one address (INFO cluster) or
// given both.
func TestCluster(t *testing.T) {
	a := startServer(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	b := startServer(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	ca, cb := client(t, a.addr), client(t, b.addr)
	ctx, cancel := ctxTimeout(20 * time.Second)
	defer cancel()
	host, port, _ := strings.Cut(b.addr, ":")
	p, _ := strconv.Atoi(port)
	for _, err := range []error{
		ca.ClusterAddSlotsRange(ctx, 0, 8191).Err(),
		cb.ClusterAddSlotsRange(ctx, 8192, 16383).Err(),
		ca.ClusterMeet(ctx, host, strconv.Itoa(p)).Err(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "cluster_state:ok on both nodes", func() bool {
		for _, c := range []*redis.Client{ca, cb} {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:2") {
				return false
			}
		}
		return true
	})
	t.Run("one address", func(t *testing.T) {
		s := open(t, a.addr, prefix(), nil)
		// Both masters hold records.
		for i := range 40 {
			if err := s.PutSync(fmt.Sprint("spread-", i), dedup.Entry{State: dedup.Completed}); err != nil {
				t.Fatal(err)
			}
		}
		if s.cluster == nil { // set by the writer when it connected, before any done
			t.Fatal("a cluster node was not detected as a cluster")
		}
		for _, c := range []*redis.Client{ca, cb} {
			if n, err := c.DBSize(ctx).Result(); err != nil || n == 0 {
				t.Fatalf("a master holds %d keys (%v)", n, err)
			}
		}
	})
	t.Run("conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) storetest.Store {
			return newStore(t, a.addr, prefix(), func(o *Options) { o.Addrs = []string{a.addr, b.addr}; o.TTL = storetest.TTL })
		})
	})
	t.Run("leases", func(t *testing.T) {
		pf := prefix()
		x := open(t, a.addr, pf, func(o *Options) { o.Addrs = []string{a.addr, b.addr}; o.Lease = time.Second })
		y := open(t, b.addr, pf, nil)
		for i := range 10 {
			take(t, x, fmt.Sprint("m", i))
		}
		time.Sleep(2500 * time.Millisecond) // renewed across both masters
		for i := range 10 {
			if prior := take(t, y, fmt.Sprint("m", i)); !prior.Elsewhere {
				t.Fatalf("m%d: %+v, want Elsewhere (renewed)", i, prior)
			}
		}
	})
}

// Sentinel: the store finds the master through a Sentinel (master_name).
func TestSentinel(t *testing.T) {
	master := startServer(t)
	dir := t.TempDir()
	_, port, _ := strings.Cut(master.addr, ":")
	conf := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(conf, []byte("bind 127.0.0.1\nsentinel monitor orders 127.0.0.1 "+port+" 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sport := freePort(t)
	bin, _ := exec.LookPath("redis-server")
	cmd := &exec.Cmd{Path: bin, Args: []string{bin, conf, "--sentinel", "--port", strconv.Itoa(sport), "--dir", dir,
		"--logfile", filepath.Join(dir, "sentinel.log")}, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	saddr := "127.0.0.1:" + strconv.Itoa(sport)
	sc := redis.NewSentinelClient(&redis.Options{Addr: saddr})
	defer sc.Close()
	waitFor(t, 10*time.Second, "the sentinel to know the master", func() bool {
		ctx, cancel := ctxTimeout(time.Second)
		defer cancel()
		a, err := sc.GetMasterAddrByName(ctx, "orders").Result()
		return err == nil && len(a) == 2
	})
	pf := prefix()
	s := open(t, saddr, pf, func(o *Options) { o.MasterName = "orders" })
	if err := s.PutSync("s1", dedup.Entry{State: dedup.Completed, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	raw, err := client(t, master.addr).Get(t.Context(), pf+"{s1}").Result()
	if err != nil {
		t.Fatalf("the record is not on the master: %v", err)
	}
	if rec, err := decodeRecord(raw); err != nil || rec.state != dedup.Completed {
		t.Fatalf("record on the master: %+v %v", rec, err)
	}
}
