package main

// The fleet scenario: the partition workload consumed by three sidecar processes in one
// consumer group, the dedup store being each replica's own bbolt file or one Redis shared
// by all three. See fleet() and the package doc.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const replicas = 3

// fleetResult is one run of one store with three replicas.
type fleetResult struct {
	result
	redisUs float64       // redis-server CPU per message (private server only; else -1)
	settle  time.Duration // from starting the replicas to a stable group of three
	dups    int           // pushes beyond one per message
	sleptMs float64       // the app's mean time in its delay per push, ms
	assign  string        // partitions per replica once stable, e.g. 3+3+2
}

// fleet runs the partition workload against three replicas per store, for each app
// profile, the two stores alternating run by run.
func fleet(runs, n int, appDelays []time.Duration, only string) error {
	dir, bin, err := workDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rs, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer rs.stop()

	stores := []string{"bbolt", "redis"}
	if only != "" {
		stores = []string{only}
		if only != "bbolt" && only != "redis" {
			return fmt.Errorf("-only %q: the fleet scenario's contenders are bbolt and redis", only)
		}
	}
	fmt.Printf("mqsidecar bench, scenario \"fleet\": %d messages of ~100 B (16 KiB producer batches), %d partitions, %d sidecar processes in one group, ordering partition, dedup on, max_inflight 64, commit every 20ms; %d runs each, alternating; medians\n",
		n, partitions, replicas, runs)
	fmt.Printf("  bbolt: one file per replica; redis: one %s (appendonly yes, appendfsync always) shared by the three\n", rs.desc)
	fmt.Printf("  fetches are held until the group is stable with all %d partitions assigned, so the three replicas share the work from the first push\n", partitions)
	fmt.Printf("  RSS is the peak of the largest replica; CPU is the three replicas' user+sys per message (redis-server's own CPU shown apart)\n")
	var summary []string
	for _, delay := range appDelays {
		profile := "instant app"
		if delay > 0 {
			profile = fmt.Sprintf("app sleeping %v", delay)
		}
		fmt.Printf("\n%s:\n", profile)
		results := make([][]fleetResult, len(stores))
		for r := 0; r < runs; r++ {
			for i, st := range stores {
				res, err := fleetOnce(bin, st, rs, delay, n, dir, r)
				if err != nil {
					return fmt.Errorf("fleet %s, %s, run %d: %w", profile, st, r+1, err)
				}
				redisCPU := "-"
				if res.redisUs >= 0 && st == "redis" {
					redisCPU = fmt.Sprintf("%.1f", res.redisUs)
				}
				fmt.Printf("  run %d %-6s x%d %9.0f msg/s  p50 %7.1f ms  p99 %7.1f ms  max RSS %5.1f MB  CPU %5.1f µs/msg (redis-server %s, broker+app %5.1f)  settle %4.1fs  partitions %s  dup pushes %d%s\n",
					r+1, st, replicas, res.rate, ms(res.p50), ms(res.p99), res.rssMB, res.cpuUs, redisCPU, res.benchUs, res.settle.Seconds(), res.assign, res.dups, slept(res))
				results[i] = append(results[i], res)
			}
		}
		fmt.Printf("\n%-22s %10s %10s %10s %12s %11s %14s %10s\n", "median of "+strconv.Itoa(runs), "msg/s", "p50 ms", "p99 ms", "peak RSS MB", "CPU µs/msg", "redis µs/msg", "vs bbolt")
		med := func(rs []fleetResult, f func(fleetResult) float64) float64 {
			v := make([]result, len(rs))
			for i, r := range rs {
				v[i] = result{rate: f(r)}
			}
			return median(v, func(r result) float64 { return r.rate })
		}
		var base float64
		for i, st := range stores {
			rate := med(results[i], func(r fleetResult) float64 { return r.rate })
			if st == "bbolt" {
				base = rate
			}
			ratio := "-"
			if base > 0 {
				ratio = fmt.Sprintf("%.0f%%", 100*rate/base)
			}
			redisCPU := "-"
			if st == "redis" && results[i][0].redisUs >= 0 {
				redisCPU = fmt.Sprintf("%.1f", med(results[i], func(r fleetResult) float64 { return r.redisUs }))
			}
			line := fmt.Sprintf("%-22s %10.0f %10.1f %10.1f %12.1f %11.1f %14s %10s", st+" x"+strconv.Itoa(replicas), rate,
				med(results[i], func(r fleetResult) float64 { return ms(r.p50) }),
				med(results[i], func(r fleetResult) float64 { return ms(r.p99) }),
				med(results[i], func(r fleetResult) float64 { return r.rssMB }),
				med(results[i], func(r fleetResult) float64 { return r.cpuUs }), redisCPU, ratio)
			fmt.Println(line)
			summary = append(summary, fmt.Sprintf("%-28s %s", profile+",", line))
		}
	}
	if len(appDelays) > 1 {
		fmt.Printf("\nfleet summary (medians of %d runs; ratio = redis msg/s / bbolt msg/s):\n", runs)
		for _, l := range summary {
			fmt.Println("  " + l)
		}
	}
	return nil
}

// slept describes the app's actual delay (time.Sleep overshoots on a busy machine).
func slept(r fleetResult) string { return sleptNote(r.sleptMs) }

// sidecarBinary builds ./cmd/mqsidecar into dir, or returns BENCH_SIDECAR_BIN.
func sidecarBinary(dir string) (string, error) {
	if bin := os.Getenv("BENCH_SIDECAR_BIN"); bin != "" { // a prebuilt binary, to compare builds
		return bin, nil
	}
	bin := filepath.Join(dir, "mqsidecar")
	// As the image builds it (Dockerfile): static, no demo, no gRPC x/net/trace pages, no
	// symbol table, so that peak RSS counts the pages of the binary users run (the demo's
	// code and the symbols add ~4 MB of it, libc ~1.5 MB).
	build := exec.Command("go", "build", "-trimpath", "-tags", "nodemo,grpcnotrace", "-ldflags=-s -w", "-o", bin, "./cmd/mqsidecar")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build mqsidecar: %w", err)
	}
	return bin, nil
}

func fleetOnce(bin, store string, rs *redisServer, delay time.Duration, n int, dir string, run int) (fleetResult, error) {
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		return fleetResult{}, err
	}
	defer kafka.Close()
	brokers := strings.Join(kafka.ListenAddrs(), ",")
	ends, err := produce(kafka.ListenAddrs(), n, 0)
	if err != nil {
		return fleetResult{}, fmt.Errorf("produce: %w", err)
	}

	// Hold every fetch until the group is stable with three members: otherwise the first
	// replica up takes all eight partitions and consumes alone until the others joined
	// (seconds: a member learns of a rebalance from its next heartbeat).
	releaseFetches := holdRequests(kafka, kmsg.Fetch)
	defer releaseFetches()

	a := newApp(ends, appProfile{delay: delay})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fleetResult{}, err
	}
	srv := &http.Server{Handler: a}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	appURL := "http://" + ln.Addr().String() + "/"

	rdir, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return fleetResult{}, err
	}
	// A key prefix of its own per run: the message IDs repeat from run to run.
	prefix := fmt.Sprintf("mqsidecar-bench:%d:%s:%d:", os.Getpid(), store, time.Now().UnixNano())
	var storeCfg string
	if store == "redis" {
		storeCfg = fmt.Sprintf(`{enabled: true, store: redis, ttl: 10m, redis: {addrs: [%q], key_prefix: %q}}`, rs.addr, prefix)
	}
	cmds := make([]*exec.Cmd, replicas)
	logs := make([]*bytes.Buffer, replicas)
	for i := range cmds {
		if store == "bbolt" {
			storeCfg = fmt.Sprintf(`{enabled: true, path: %q}`, filepath.Join(rdir, "dedup-"+strconv.Itoa(i)+".db"))
		}
		cfg := fmt.Sprintf(`source:
  kind: kafka
  kafka: {brokers: [%s], group: bench, topics: [%s], message_id: "header:message-id", commit_interval: 20ms, session_timeout: 6s, client_id: replica-%d}
app: {url: %q}
delivery: {ordering: partition, max_inflight: 64}
dedup: %s
admin: {listen: ""}
log: {level: warn}
`, brokers, topic, i, appURL, storeCfg)
		path := filepath.Join(rdir, "config-"+strconv.Itoa(i)+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return fleetResult{}, err
		}
		cmd := exec.Command(bin, "run", "--config", path)
		logs[i] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = logs[i], logs[i]
		if extra := os.Getenv("BENCH_CONSUMER_ENV"); extra != "" {
			env := os.Environ()
			for _, kv := range strings.Fields(extra) {
				// One profile per process: MQSIDECAR_CPUPROFILE=f becomes f.<store>.run<r>.replica<i>.
				if v, ok := strings.CutPrefix(kv, "MQSIDECAR_CPUPROFILE="); ok {
					kv = fmt.Sprintf("MQSIDECAR_CPUPROFILE=%s.%s.run%d.replica%d", v, store, run+1, i)
				}
				env = append(env, kv)
			}
			cmd.Env = env
		}
		cmds[i] = cmd
	}
	allLogs := func() string {
		var b strings.Builder
		for i, l := range logs {
			fmt.Fprintf(&b, "--- replica %d:\n%s\n", i, tail(l.String()))
		}
		return b.String()
	}
	benchCPU := cpuSeconds(os.Getpid())
	redisCPU := rs.cpu()
	began := time.Now()
	for i, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			return fleetResult{}, err
		}
		defer stopAll(cmds[:i+1])
	}
	exited := make([]atomic.Bool, replicas)
	for i, cmd := range cmds {
		go func() { _ = cmd.Wait(); exited[i].Store(true) }()
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...))
	if err != nil {
		return fleetResult{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	// Wait for a stable group of three that owns every partition.
	var settle time.Duration
	var assign string
	for settle == 0 {
		if time.Since(began) > time.Minute {
			return fleetResult{}, fmt.Errorf("group not stable with %d members after a minute; logs:\n%s", replicas, allLogs())
		}
		for i := range exited {
			if exited[i].Load() {
				return fleetResult{}, fmt.Errorf("replica %d exited; logs:\n%s", i, allLogs())
			}
		}
		if assign = groupReady(adm, replicas); assign != "" {
			settle = time.Since(began)
			releaseFetches()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	committed := make([]int64, partitions)
	deadline := time.Now().Add(5 * time.Minute)
	rss := 0.0
	for {
		if time.Now().After(deadline) {
			return fleetResult{}, fmt.Errorf("not fully committed after 5 minutes; logs:\n%s", allLogs())
		}
		for i := range exited {
			if exited[i].Load() {
				return fleetResult{}, fmt.Errorf("replica %d exited; logs:\n%s", i, allLogs())
			}
		}
		offs, err := adm.FetchOffsets(context.Background(), "bench")
		now := time.Now()
		if err == nil {
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Topic == topic && o.At > committed[o.Partition] {
					a.committed(o.Partition, committed[o.Partition], o.At, now)
					committed[o.Partition] = o.At
				}
			})
		}
		for _, cmd := range cmds {
			rss = max(rss, peakRSS(cmd.Process.Pid))
		}
		done := true
		for p, end := range ends {
			if committed[p] < end {
				done = false
			}
		}
		if done {
			break
		}
		time.Sleep(3 * time.Millisecond)
	}
	res := fleetResult{result: a.result(n), settle: settle, redisUs: -1, assign: assign}
	res.rssMB = rss
	var cpu float64
	for _, cmd := range cmds {
		cpu += cpuSeconds(cmd.Process.Pid)
	}
	res.cpuUs = cpu * 1e6 / float64(n)
	res.benchUs = (cpuSeconds(os.Getpid()) - benchCPU) * 1e6 / float64(n)
	if redisCPU >= 0 {
		res.redisUs = (rs.cpu() - redisCPU) * 1e6 / float64(n)
	}
	a.mu.Lock()
	res.dups = a.pushes - n
	res.sleptMs = float64(a.slept.Load()) / 1e6 / float64(max(a.pushes, 1))
	a.mu.Unlock()
	if os.Getenv("BENCH_DEBUG") != "" {
		fmt.Println(allLogs())
		for i, cmd := range cmds { // where the resident memory is: anonymous (heap, stacks) or file (binary, bbolt's mmap)
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
			var f []string
			for _, l := range strings.Split(string(b), "\n") {
				for _, k := range []string{"VmHWM", "VmRSS", "RssAnon", "RssFile", "Threads"} {
					if strings.HasPrefix(l, k+":") {
						f = append(f, strings.Join(strings.Fields(l), " "))
					}
				}
			}
			fmt.Printf("    %s replica %d: %s\n", store, i, strings.Join(f, ", "))
		}
	}
	if store == "redis" {
		if err := rs.forget(prefix); err != nil {
			fmt.Fprintln(os.Stderr, "bench: removing the run's Redis keys:", err)
		}
	}
	return res, nil
}

// holdRequests makes kafka hold every request of key until release is called (once or
// more).
func holdRequests(kafka *kfake.Cluster, key kmsg.Key) (release func()) {
	ch := make(chan struct{})
	var released atomic.Bool
	kafka.ControlKey(key.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		if released.Load() {
			kafka.DropControl()
			return nil, nil, false
		}
		kafka.KeepControl()
		kafka.SleepControl(func() { <-ch })
		return nil, nil, false
	})
	return func() {
		if released.CompareAndSwap(false, true) {
			close(ch)
		}
	}
}

// groupReady reports whether group "bench" is stable with members members that together
// own every partition: it returns how many each owns (e.g. "3+3+2"), "" when not ready.
func groupReady(adm *kadm.Client, members int) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	gs, err := adm.DescribeGroups(ctx, "bench")
	if err != nil {
		return ""
	}
	g, ok := gs["bench"]
	if !ok || g.Err != nil || g.State != "Stable" || len(g.Members) != members {
		return ""
	}
	owned := 0
	var each []string
	for _, m := range g.Members {
		ca, ok := m.Assigned.AsConsumer()
		if !ok {
			return ""
		}
		mine := 0
		for _, t := range ca.Topics {
			mine += len(t.Partitions)
		}
		if mine == 0 {
			return "" // each replica owns something
		}
		owned += mine
		each = append(each, strconv.Itoa(mine))
	}
	if owned != partitions {
		return ""
	}
	slices.Sort(each)
	slices.Reverse(each)
	return strings.Join(each, "+")
}

// stopAll interrupts every replica at once and waits for them (killing after 30 s).
func stopAll(cmds []*exec.Cmd) {
	var wg sync.WaitGroup
	for _, cmd := range cmds {
		if cmd == nil || cmd.Process == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = cmd.Process.Signal(os.Interrupt)
			t := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
			defer t.Stop()
			for cmd.ProcessState == nil && processAlive(cmd.Process.Pid) {
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
}

// processAlive reports whether pid exists and is not a zombie (cmd.Wait runs elsewhere).
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// redisServer is the Redis the redis contender shares: a private redis-server started
// here, or the one MQSIDECAR_E2E_REDIS names.
type redisServer struct {
	addr string
	desc string
	cmd  *exec.Cmd // nil when not ours
	rdb  *redis.Client
}

func startRedis(dir string) (*redisServer, error) {
	if addr := os.Getenv("MQSIDECAR_E2E_REDIS"); addr != "" {
		rs := &redisServer{addr: addr, desc: "shared Redis at " + addr + " (MQSIDECAR_E2E_REDIS)", rdb: redis.NewClient(&redis.Options{Addr: addr})}
		if err := rs.check(); err != nil {
			rs.rdb.Close()
			return nil, fmt.Errorf("MQSIDECAR_E2E_REDIS=%s: %w", addr, err)
		}
		return rs, nil
	}
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("the fleet scenario needs a Redis: redis-server is not on PATH; install it (sudo apt-get install redis-server) " +
			"or start the harness one (e2e/harness/redis.sh start; eval \"$(e2e/harness/redis.sh env)\") and run again with MQSIDECAR_E2E_REDIS set")
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	port := ports[0]
	data := filepath.Join(dir, "redis")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	cmd := exec.Command(path, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", data,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "yes")
	cmd.Stdout, cmd.Stderr = &out, &out
	dieWithParent(cmd) // never outlive the bench
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	rs := &redisServer{addr: addr, cmd: cmd, rdb: redis.NewClient(&redis.Options{Addr: addr}),
		desc: "private redis-server on " + addr + " (data in the bench's temp dir)"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := rs.check()
		if err == nil {
			return rs, nil
		}
		if time.Now().After(deadline) {
			rs.stop()
			return nil, fmt.Errorf("redis-server on %s not ready after 10s: %v; output:\n%s", addr, err, tail(out.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check pings the server and verifies it is durable the way the store requires.
func (rs *redisServer) check() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rs.rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	m, err := rs.rdb.ConfigGet(ctx, "append*").Result()
	if err != nil {
		return nil // not permitted: the store decides
	}
	if m["appendonly"] != "yes" || m["appendfsync"] != "always" {
		return fmt.Errorf("redis runs with appendonly %q, appendfsync %q; the store (wait_replicas 0) needs yes and always", m["appendonly"], m["appendfsync"])
	}
	return nil
}

// cpu is redis-server's user+sys seconds, -1 when it is not ours.
func (rs *redisServer) cpu() float64 {
	if rs.cmd == nil {
		return -1
	}
	return cpuSeconds(rs.cmd.Process.Pid)
}

// forget deletes the keys of one run (the shared server keeps nothing of the bench).
func (rs *redisServer) forget(prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	iter := rs.rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		err := rs.rdb.Unlink(ctx, keys...).Err()
		keys = keys[:0]
		return err
	}
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) >= 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}

func (rs *redisServer) stop() {
	rs.rdb.Close()
	if rs.cmd == nil {
		return
	}
	_ = rs.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = rs.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = rs.cmd.Process.Kill()
		<-done
	}
}
