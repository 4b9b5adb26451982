package main

// The bytes scenario (-scenario bytes) measures the sidecar's peak RSS with large messages
// and a slow app: the byte budget, delivery.max_buffer_bytes (G4 in docs/guarantees.md).
//
// For each message size of -sizes (256 KiB, 1 MiB and 10 MiB by default) a backlog of
// -backlog bytes (256 MiB) is produced to an embedded Kafka (kfake, 8 partitions, no
// compression), then one sidecar process (ordering partition, max_inflight 64, dedup on,
// the default budget unless -budget is set) consumes it while the app answers each push
// after -app-delay (100 ms): 8 pushes in flight, one per partition, and everything else
// waits in the sidecar's buffers. A run ends when every partition is committed; its peak
// RSS is the process's VmHWM. With -baseline-bin PATH, that binary (e.g. main's build,
// which has no byte budget) runs alternately with this build, so both are measured on the
// same machine in the same minutes.

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// bytesOptions are the flags of the bytes scenario.
type bytesOptions struct {
	runs        int
	sizes       []int
	backlog     int
	delay       time.Duration
	budget      int // delivery.max_buffer_bytes; 0 = the sidecar's default
	baselineBin string
}

// parseSize reads "256KiB", "1MiB", "10MiB" or a number of bytes.
func parseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	for suffix, m := range map[string]int{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("not a size: %q (e.g. 1MiB)", s)
	}
	return n * mult, nil
}

func parseSizes(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func fmtSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + " KiB"
	}
	return strconv.Itoa(n) + " B"
}

type bytesResult struct {
	rssMB float64
	secs  float64
}

// bytesMain runs the bytes scenario with its flags (parsed by main).
func bytesMain(runs int, sizes, backlog string, delay time.Duration, budget int, baselineBin string) error {
	o := bytesOptions{runs: runs, delay: delay, budget: budget, baselineBin: baselineBin}
	var err error
	if o.sizes, err = parseSizes(sizes); err != nil {
		return fmt.Errorf("-sizes: %w", err)
	}
	if o.backlog, err = parseSize(backlog); err != nil {
		return fmt.Errorf("-backlog: %w", err)
	}
	return bytesBench(o)
}

func bytesBench(o bytesOptions) error {
	dir, err := os.MkdirTemp("", "mqsidecar-bench-bytes-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := sidecarBinary(dir)
	if err != nil {
		return err
	}
	type build struct{ name, bin string }
	builds := []build{{"this build", bin}}
	if o.baselineBin != "" {
		builds = []build{{"baseline", o.baselineBin}, {"this build", bin}}
	}
	budget := "default (64 MiB)"
	if o.budget > 0 {
		budget = fmtSize(o.budget)
	}
	fmt.Printf("mqsidecar bench, scenario \"bytes\": %s backlog per size, %d partitions, app latency %v, ordering partition, max_inflight 64, dedup on, max_buffer_bytes %s; %d runs each, alternating; medians of peak RSS (VmHWM)\n",
		fmtSize(o.backlog), partitions, o.delay, budget, o.runs)
	fmt.Printf("\n%-10s %-12s %14s %10s\n", "size", "build", "peak RSS MB", "seconds")
	for _, size := range o.sizes {
		res := make([][]bytesResult, len(builds))
		for r := 0; r < o.runs; r++ {
			for i, b := range builds {
				br, err := bytesOnce(b.bin, size, o, dir)
				if err != nil {
					return fmt.Errorf("%s, %s run %d: %w", fmtSize(size), b.name, r+1, err)
				}
				if os.Getenv("BENCH_DEBUG") != "" {
					fmt.Printf("  run %d %-10s %-12s RSS %6.1f MB  %5.1f s\n", r+1, fmtSize(size), b.name, br.rssMB, br.secs)
				}
				res[i] = append(res[i], br)
			}
		}
		for i, b := range builds {
			rss := medianOf(res[i], func(r bytesResult) float64 { return r.rssMB })
			secs := medianOf(res[i], func(r bytesResult) float64 { return r.secs })
			ratio := ""
			if i > 0 {
				ratio = fmt.Sprintf("  %.2fx of baseline", rss/medianOf(res[0], func(r bytesResult) float64 { return r.rssMB }))
			}
			fmt.Printf("%-10s %-12s %14.1f %10.1f%s\n", fmtSize(size), b.name, rss, secs, ratio)
		}
	}
	return nil
}

func medianOf[T any](rs []T, f func(T) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func bytesOnce(bin string, size int, o bytesOptions, dir string) (bytesResult, error) {
	maxMsg := strconv.Itoa(size + 1<<20)
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": maxMsg}))
	if err != nil {
		return bytesResult{}, err
	}
	defer kafka.Close()
	ends, err := produceSized(kafka.ListenAddrs(), size, max(partitions, o.backlog/size))
	if err != nil {
		return bytesResult{}, fmt.Errorf("produce: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return bytesResult{}, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(o.delay)
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	rdir, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return bytesResult{}, err
	}
	cfg := fmt.Sprintf(`source:
  kind: kafka
  kafka: {brokers: [%s], group: bench, topics: [%s], message_id: "header:message-id"}
app: {url: "http://%s/"}
delivery: {ordering: partition, max_inflight: 64}
dedup: {enabled: true, path: %q}
admin: {listen: ""}
log: {level: warn}
`, strings.Join(kafka.ListenAddrs(), ","), topic, ln.Addr(), filepath.Join(rdir, "dedup.db"))
	path := filepath.Join(rdir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return bytesResult{}, err
	}
	cmd := exec.Command(bin, "run", "--config", path)
	if o.budget > 0 { // by environment, so a config without the key runs on older builds too
		cmd.Env = append(os.Environ(), "MQSIDECAR_DELIVERY_MAX_BUFFER_BYTES="+strconv.Itoa(o.budget))
	}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return bytesResult{}, err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()

	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...))
	if err != nil {
		return bytesResult{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(5 * time.Minute)
	var rss float64
	for {
		if time.Now().After(deadline) {
			return bytesResult{}, fmt.Errorf("not fully committed after 5 minutes; logs:\n%s", tail(logs.String()))
		}
		if cmd.ProcessState != nil {
			return bytesResult{}, fmt.Errorf("sidecar exited; logs:\n%s", tail(logs.String()))
		}
		rss = max(rss, peakRSS(cmd.Process.Pid))
		done := false
		if offs, err := adm.FetchOffsets(context.Background(), "bench"); err == nil {
			done = true
			for p, end := range ends {
				if o, ok := offs.Lookup(topic, int32(p)); !ok || o.At < end {
					done = false
				}
			}
		}
		if done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return bytesResult{rssMB: max(rss, peakRSS(cmd.Process.Pid)), secs: time.Since(start).Seconds()}, nil
}

// produceSized writes n records of size bytes round-robin over the partitions, uncompressed,
// and returns each partition's end offset.
func produceSized(brokers []string, size, n int) ([]int64, error) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	return produceRecords(brokers, n, func(int) *kgo.Record { return &kgo.Record{Value: payload} },
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytes(int32(size+(64<<10))), kgo.MaxBufferedBytes(64<<20))
}

type bytesFlags struct {
	sizes, backlog, baselineBin *string
	delay                       *time.Duration
	budget                      *int
}

// bytesFlagSet declares the flags of -scenario bytes on the default flag set.
func bytesFlagSet() bytesFlags {
	return bytesFlags{
		sizes:       flag.String("sizes", "256KiB,1MiB,10MiB", "-scenario bytes: message sizes, comma-separated"),
		backlog:     flag.String("backlog", "256MiB", "-scenario bytes: bytes produced per size"),
		delay:       flag.Duration("app-delay", 100*time.Millisecond, "-scenario bytes: the app's latency per push"),
		budget:      flag.Int("budget", 0, "-scenario bytes: delivery.max_buffer_bytes (0 = the sidecar's default)"),
		baselineBin: flag.String("baseline-bin", "", "-scenario bytes: a sidecar binary to compare with (e.g. main's build)"),
	}
}

// runBytes runs -scenario bytes and exits on failure.
func runBytes(runs int, f bytesFlags) {
	if err := bytesMain(runs, *f.sizes, *f.backlog, *f.delay, *f.budget, *f.baselineBin); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
