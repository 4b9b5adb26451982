package main

// The idle and held scenarios: what a consumer costs while it has nothing to do. idle: it is
// connected, its partitions assigned, and no message arrives. held: every partition has a
// backlog and the app takes a second per push, so every lane of the sidecar is held (its
// look-ahead admitted, one push on the wire) and the rest waits in the broker. Either way
// the consumer should wait on events, not poll: its CPU per second of wall time is the
// measure.

import (
	"fmt"
	"maps"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// heldDelay is the held scenario's app latency, and heldBacklog the messages per partition:
// far more than a lane's look-ahead (max_inflight/2) plus what the adapter buffers.
const (
	heldDelay   = time.Second
	heldBacklog = 400
)

// idleResult is one run of one contender.
type idleResult struct {
	cpuPerSec time.Duration // CPU per second of wall time over the window
	pushes    int           // pushes that arrived during the window
	lanes     int           // partitions with a push during the window
}

func idle(held bool, runs int, window time.Duration, only, profile string) error {
	dir, bin, err := workDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cs, err := contenders(only, "partition")
	if err != nil {
		return err
	}
	name := "idle"
	if held {
		name = "held"
		fmt.Printf("mqsidecar bench, scenario \"held\": %d partitions with %d messages each, an app that answers each push after %v; dedup on, ordering partition, max_inflight 64, commit every %v; CPU per second of wall time over %v, measured from 2 s after every partition had a push (the loop: after its first push); %d runs each, alternating; medians\n",
			partitions, heldBacklog, heldDelay, commitInterval, window, runs)
	} else {
		fmt.Printf("mqsidecar bench, scenario \"idle\": %d partitions, no messages; dedup on, ordering partition, commit every %v; CPU per second of wall time over %v, measured from 2 s after the group is stable with the consumer owning every partition; %d runs each, alternating; medians\n",
			partitions, commitInterval, window, runs)
	}
	results := make([][]idleResult, len(cs))
	for r := 0; r < runs; r++ {
		for i, c := range cs {
			res, err := idleOnce(held, c, bin, dir, window, profilePath(profile, name, "", c, r+1))
			if err != nil {
				return fmt.Errorf("%s run %d: %w", c.name, r+1, err)
			}
			fmt.Printf("  run %d %-34s CPU %6.2f ms/s (%5.2f%% of one core)", r+1, c.name, ms(res.cpuPerSec), pct(res.cpuPerSec))
			if held {
				fmt.Printf("  %d pushes on %d partitions during the window", res.pushes, res.lanes)
			}
			fmt.Println()
			results[i] = append(results[i], res)
		}
	}
	fmt.Printf("\n%-34s %12s %14s\n", "median of "+strconv.Itoa(runs), "CPU ms/s", "% of one core")
	for i, c := range cs {
		v := make([]result, len(results[i]))
		for j, r := range results[i] {
			v[j] = result{cpuUs: float64(r.cpuPerSec)}
		}
		cpu := time.Duration(median(v, func(r result) float64 { return r.cpuUs }))
		fmt.Printf("%-34s %12.2f %13.2f%%\n", c.name, ms(cpu), pct(cpu))
	}
	return nil
}

// pct is CPU per second as a percentage of one core.
func pct(perSec time.Duration) float64 { return 100 * perSec.Seconds() }

func idleOnce(held bool, c contender, bin, dir string, window time.Duration, profile string) (idleResult, error) {
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		return idleResult{}, err
	}
	defer kafka.Close()
	a := &pushCounter{}
	if held {
		if _, err := produce(kafka.ListenAddrs(), partitions*heldBacklog, 0); err != nil {
			return idleResult{}, fmt.Errorf("produce: %w", err)
		}
		a.delay = heldDelay
	}
	cmd, logs, stopApp, err := startConsumer(c, bin, dir, kafka, a, profile)
	if err != nil {
		return idleResult{}, err
	}
	defer stopApp()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...))
	if err != nil {
		return idleResult{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ready := func() bool { return groupReady(adm, 1) != "" }
	if held {
		want := partitions // the sidecar pushes every partition at once
		if c.name == loopName {
			want = 1 // the loop pushes one record at a time, batch by batch
		}
		ready = func() bool { return a.lanes() >= want }
	}
	for deadline := time.Now().Add(time.Minute); !ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return idleResult{}, fmt.Errorf("not settled after a minute; logs:\n%s", tail(logs.String()))
		}
		select {
		case <-exited:
			return idleResult{}, fmt.Errorf("consumer exited; logs:\n%s", tail(logs.String()))
		default:
		}
	}
	time.Sleep(2 * time.Second) // start-up work done; in held, every lane has filled up
	pushes0, _ := a.snapshot()
	cpu0, t0 := processCPU(cmd.Process.Pid), time.Now()
	time.Sleep(window)
	cpu1, t1 := processCPU(cmd.Process.Pid), time.Now()
	pushes1, last := a.snapshot()
	select {
	case <-exited:
		return idleResult{}, fmt.Errorf("consumer exited; logs:\n%s", tail(logs.String()))
	default:
	}
	if os.Getenv("BENCH_DEBUG") != "" {
		fmt.Println(logs.String())
		if strings.HasPrefix(c.name, "mqsidecar") {
			printMetrics()
		}
	}
	res := idleResult{cpuPerSec: time.Duration(float64(cpu1-cpu0) / t1.Sub(t0).Seconds()), pushes: pushes1 - pushes0}
	for _, seq := range last {
		if seq > pushes0 {
			res.lanes++
		}
	}
	return res, nil
}

// pushCounter is the idle and held scenarios' app: it answers 200 after delay and counts
// pushes by partition.
type pushCounter struct {
	delay time.Duration
	mu    sync.Mutex
	seq   int            // pushes so far
	last  map[string]int // partition → seq of its last push
}

func (a *pushCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.seq++
	if a.last == nil {
		a.last = map[string]int{}
	}
	a.last[r.Header.Get("ce-partition")] = a.seq
	a.mu.Unlock()
	time.Sleep(a.delay)
	w.WriteHeader(http.StatusOK)
}

// lanes is the number of partitions pushed so far.
func (a *pushCounter) lanes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.last)
}

// snapshot returns the pushes so far and, by partition, the number of its last push.
func (a *pushCounter) snapshot() (int, map[string]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seq, maps.Clone(a.last)
}
