// Command bench measures mqsidecar against a hand-written consumer loop (poll, POST each
// record, commit) on the same embedded Kafka (kfake), the same app and the same machine,
// alternating runs, and prints medians and ratios.
//
// Each run: produce the messages first, then start the consumer as a separate process (so
// its peak RSS is its own), and measure from the first push the app receives to the moment
// the group's committed offsets reach the end of every partition. Push-to-commit latency is
// per message: the time from its push arriving at the app to the first observed commit
// covering its offset (committed offsets are polled every few milliseconds). CPU per
// message is the consumer process's user+system time (its process CPU clock) over the same
// span — from the first push to the commit of the last offset, so start-up (joining the
// group, opening the store) is not spread over the messages — divided by the messages.
//
// App profiles (-apps): the partition scenario runs each of the instant app (answers at
// once), apps that sleep 0.2 ms, 1 ms and 5 ms per push (a handler waiting on a database,
// as every real one does) and a CPU-bound app (about 0.1 ms of hashing per push), the loop
// and the sidecar alternating within each profile; slower profiles use fewer messages, so
// that each run of the loop, which pushes one message at a time, lasts a few seconds.
//
// The sidecar commits every 20 ms here (-commit-interval; its default is 1 s): a run lasts
// 1-3 s and ends at the commit covering the last offset, so a longer interval would add up
// to one interval to every run, in steps, while the loop commits each batch synchronously.
//
// The idle and held scenarios (-scenario idle|held, see idle.go) measure CPU per second of
// wall time: connected with nothing to consume, and with every lane held by an app that
// takes a second per push. They use the sidecar's default commit_interval (1 s), as no run
// has to end quickly there.
//
// The fleet scenario (-scenario fleet) is the partition workload (30k messages by default)
// consumed by three sidecar processes in one consumer group, once with each replica's own
// bbolt file and once with one Redis shared by the three (dedup.store: redis), alternating,
// for each app profile of -app-delays (the instant app and one sleeping 0.2 ms per push by
// default). The Redis is a private redis-server (appendonly yes, appendfsync always, on a
// free loopback port, data in the temp dir), or the one MQSIDECAR_E2E_REDIS names; each run
// uses a key prefix of its own and deletes its keys afterwards. Fetches are held (a kfake
// control function) until the group is stable with three members owning all partitions, so
// the replicas share the work from the first push. It reports the three replicas' total
// msg/s, push-to-commit latency, the largest replica's peak RSS, the replicas' summed CPU per
// message (and redis-server's own, when private) and the ratio redis/bbolt.
//
// The share scenario (-scenario share, see share.go): one partition, an app sleeping 5 ms,
// ordering none and max_inflight 8 for every contender: one sidecar in a consumer group (all
// that one partition can use) beside 1, 2 and 4 sidecars in one share group
// (source.kafka.mode: share); unique messages answered per second, 6000 messages by default.
//
// The tracing scenario (-scenario tracing, see tracing.go) is the partition scenario's
// sidecar with tracing off and on (100% sampling, exporting over OTLP/HTTP to a receiver in
// the bench that discards the spans), alternating, for the instant app and the 0.2 ms app;
// its ratios are tracing on over off.
//
// The publish scenario (-scenario publish, see publish.go) measures the publish endpoint
// beside a hand-written franz-go producer loop, on kfake and a real Kafka (-kafka).
//
// Usage: go run ./bench [-runs 5] [-messages N] [-scenario partition|key|none|tracing|idle|held|fleet|share|publish] [-apps instant,200us,1ms,5ms,cpu] [-only NAME] [-cpuprofile PREFIX] [-app-delays 0,200us]
//
// Investigation aids: -cpuprofile PREFIX writes a CPU profile of every consumer run, the
// loop's too (PREFIX-<scenario>[-<app>]-<contender>-run<N>.pprof, and the sidecar's
// allocations beside it; read them with go tool pprof -top); BENCH_DEBUG=1 prints the
// consumer's logs, memory lines and the sidecar's metrics after each run;
// BENCH_CONSUMER_ENV="K=V ..." adds environment to the consumer process (GODEBUG=gctrace=1,
// GOGC=..., MQSIDECAR_CPUPROFILE=file; in the fleet scenario each replica writes
// file.<store>.run<N>.replica<I>); BENCH_SIDECAR_BIN=path runs that binary instead of
// building ./cmd/mqsidecar; BENCH_BASELINE_BIN=path adds that build (e.g. main's) as a
// contender of its own, mqsidecar@baseline, alternating with this one in every run.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/prometheus/procfs"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	topic      = "bench"
	partitions = 8
)

type scenario struct {
	name     string
	ordering string
	apps     string // default app profiles (see parseApps)
	keys     int
	tracing  bool // the sidecar without and with tracing, no loop (tracing.go)
}

var scenarios = map[string]scenario{
	// Issues 1 and 13: 8 partitions, dedup on, ordering partition, for each app profile:
	// the instant app, fixed latencies (what every real handler has) and a CPU-bound one.
	"partition": {name: "partition", ordering: "partition", apps: "instant,200us,1ms,5ms,cpu"},
	// Issue: app with 5 ms latency, 200 keys, max_inflight 64; ordering key vs partition vs none.
	"key": {name: "key", ordering: "key", apps: "5ms", keys: 200},
	// For investigations: the instant app without ordering constraints.
	"none": {name: "none", ordering: "none", apps: "instant"},
	// Issue 18: the partition scenario's sidecar with tracing off and on (100% sampling,
	// exporting to a receiver in the bench), for each of its app profiles; ratios on/off
	// (tracing.go).
	"tracing": {name: "tracing", ordering: "partition", apps: "instant,200us,1ms,5ms,cpu", tracing: true},
}

// appProfile is how the bench's app answers each push.
type appProfile struct {
	name  string        // as given to -apps: instant, 200us, cpu, ...
	delay time.Duration // sleeps this long (a handler waiting on I/O)
	work  int           // then hashes 1 KiB this many times (a CPU-bound handler)
	busy  time.Duration // what work was calibrated to take
	n     int           // messages per run unless -messages says otherwise
}

// cpuWork is the CPU-bound handler's work per push: -apps cpu means cpu:100us.
const cpuWork = 100 * time.Microsecond

// parseApps reads -apps: instant (or 0), a duration the app sleeps per push (200us, 1ms),
// or cpu[:duration], a handler that computes for about that long per push (calibrated
// once: a fixed number of SHA-256 rounds, so it costs the same work whatever the load).
func parseApps(list string, keys int) ([]appProfile, error) {
	var out []appProfile
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		a := appProfile{name: f}
		switch {
		case f == "instant" || f == "0":
			a.name, a.n = "instant", 50000
		case f == "cpu" || strings.HasPrefix(f, "cpu:"):
			d := cpuWork
			if v, ok := strings.CutPrefix(f, "cpu:"); ok {
				var err error
				if d, err = time.ParseDuration(v); err != nil {
					return nil, fmt.Errorf("-apps %s: %w", f, err)
				}
			}
			a.work, a.busy, a.n = calibrate(d), d, 10000
		default:
			d, err := time.ParseDuration(f)
			if err != nil {
				return nil, fmt.Errorf("-apps %s: %w", f, err)
			}
			a.delay = d
			// About as many seconds of the hand-written loop (which pushes one at a time)
			// for each profile; 10000 with keys: the key scenario's sidecars need the length.
			switch {
			case keys > 0:
				a.n = 10000
			case d < 500*time.Microsecond:
				a.n = 8000
			case d < 2*time.Millisecond:
				a.n = 4000
			default:
				a.n = 2000
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// calibrate returns how many 1 KiB SHA-256 rounds take about d of CPU time on this
// machine. It counts the CPU time of its own thread, not the wall time, so a machine busy
// with other work at that moment does not shrink the work (by wall time, a load of 10 on
// two cores made it 18 rounds instead of ~140).
func calibrate(d time.Duration) int {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var buf [1024]byte
	rounds, start := 0, threadCPU()
	for threadCPU()-start < 50*time.Millisecond {
		for range 100 {
			sum := sha256.Sum256(buf[:])
			buf[0] ^= sum[0]
		}
		rounds += 100
	}
	return max(1, int(float64(rounds)*float64(d)/float64(threadCPU()-start)))
}

// threadCPU is the CPU time the calling OS thread has used (CLOCK_THREAD_CPUTIME_ID).
func threadCPU() time.Duration {
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 3, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic("clock_gettime(CLOCK_THREAD_CPUTIME_ID): " + errno.Error())
	}
	return time.Duration(ts.Nano())
}

func (a appProfile) String() string {
	switch {
	case a.work > 0:
		return fmt.Sprintf("CPU-bound app (%d SHA-256 rounds of 1 KiB per push, ~%v when calibrated)", a.work, a.busy)
	case a.delay > 0:
		return fmt.Sprintf("app sleeping %v", a.delay)
	}
	return "instant app"
}

func main() {
	mode := flag.String("mode", "", "internal: baseline (run the hand-written loop), bound (the 64-at-once pusher)")
	runs := flag.Int("runs", 5, "runs per contender; medians are reported")
	messages := flag.Int("messages", 0, "messages per run (default 50000; 10000 for -scenario key, whose baseline does 200 msg/s; 30000 for -scenario fleet)")
	scen := flag.String("scenario", "partition", "partition | key | none | tracing | fleet | share | publish | idle | held")
	appDelays := flag.String("app-delays", "0,200us", "-scenario fleet: the app profiles, comma-separated push latencies (0 = the instant app)")
	apps := flag.String("apps", "", "the app profiles, comma-separated: instant, a latency (200us, 1ms, 5ms), cpu[:100us] (default: partition and tracing all five, key 5ms, none instant)")
	window := flag.Duration("window", 5*time.Second, "-scenario idle and held: how long CPU is measured, once the consumer is settled (these two use the sidecar's default commit_interval, 1s, unless -commit-interval is given)")
	flag.DurationVar(&commitInterval, "commit-interval", commitInterval, "the sidecar's source.kafka.commit_interval (its default is 1s)")
	profile := flag.String("cpuprofile", "", "write a CPU profile of each consumer run to PREFIX-<scenario>[-<app>]-<contender>-run<N>.pprof (MQSIDECAR_CPUPROFILE)")
	only := flag.String("only", "", "run only the contenders whose name contains this (investigations; no ratios without the loop)")
	bytesFlags := bytesFlagSet() // -scenario bytes (bench/bytes.go)
	pubFlags := publishFlagSet() // -scenario publish (bench/publish.go)
	brokers := flag.String("brokers", "", "internal")
	appURL := flag.String("app", "", "internal")
	flag.Parse()
	if *mode == "baseline" || *mode == "bound" {
		stop := startProfile(os.Getenv("MQSIDECAR_CPUPROFILE"))
		consume := baseline
		if *mode == "bound" {
			consume = func(brokers []string, appURL string) error { return bound(brokers, appURL, *messages) }
		}
		err := consume(strings.Split(*brokers, ","), *appURL)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "baseline:", err)
			os.Exit(1)
		}
		return
	}
	if *scen == "publish" {
		if err := publishBench(*runs, *messages, *pubFlags.kafka, *only, *profile); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *scen == "bytes" {
		runBytes(*runs, bytesFlags)
		return
	}
	if *scen == "fleet" {
		var delays []time.Duration
		for _, f := range strings.Split(*appDelays, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil {
				fmt.Fprintln(os.Stderr, "-app-delays:", err)
				os.Exit(2)
			}
			delays = append(delays, d)
		}
		if *messages == 0 {
			*messages = 30000
		}
		if err := fleet(*runs, *messages, delays, *only); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *scen == "share" {
		if *messages == 0 {
			*messages = 6000
		}
		if err := shareBench(*runs, *messages, 5*time.Millisecond); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *scen == "idle" || *scen == "held" {
		explicit := false
		flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "commit-interval" })
		if !explicit {
			commitInterval = time.Second // the sidecar's default: no run has to end quickly here
		}
		if err := idle(*scen == "held", *runs, *window, *only, *profile); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	sc, ok := scenarios[*scen]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown scenario", *scen)
		os.Exit(2)
	}
	if *apps == "" {
		*apps = sc.apps
	}
	profiles, err := parseApps(*apps, sc.keys)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := bench(sc, profiles, *runs, *messages, *only, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// result is one run of one contender.
type result struct {
	rate     float64 // msg/s
	p50, p99 time.Duration
	rssMB    float64
	cpuUs    float64 // consumer CPU (user+sys) per message, microseconds
	benchUs  float64 // this process's CPU per message while the consumer ran: broker + app
	order    int     // per-key order violations seen by the app
	sleptMs  float64 // the app's mean time in its delay per push (time.Sleep overshoots on a busy machine)
	// switches are the consumer's context switches per message (its threads' voluntary and
	// involuntary ones): how often it sleeps and is woken, which costs CPU in the kernel
	// and the Go scheduler and depends less on the machine's load than CPU time does.
	switches float64
}

const loopName = "hand-written loop"

// commitInterval is the sidecar's commit_interval (-commit-interval).
var commitInterval = 20 * time.Millisecond

type contender struct {
	name  string
	short string // in file names
	cmd   func(bin, brokers, appURL, dir string) *exec.Cmd
	// env is added to the consumer's environment.
	env []string
	// sink receives the contender's spans (the tracing scenario's tracing-on sidecar).
	sink *otlpSink
}

// contenders returns the hand-written loop and the sidecar with each ordering, each
// writing its consumer's files into the run's directory; only those whose name contains
// only, when set (-only).
func contenders(only string, orderings ...string) ([]contender, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cs := []contender{{name: loopName, short: "loop", cmd: func(_ string, brokers, appURL, _ string) *exec.Cmd {
		return exec.Command(self, "-mode", "baseline", "-brokers", brokers, "-app", appURL)
	}}}
	// BENCH_BASELINE_BIN: another build of the sidecar (e.g. main's) runs beside this one,
	// alternating within each run, so a change is measured against what it changes in the
	// same minutes of a shared machine.
	builds := []struct{ name, short, bin string }{{"mqsidecar", "sidecar", ""}}
	if b := os.Getenv("BENCH_BASELINE_BIN"); b != "" {
		builds = append([]struct{ name, short, bin string }{{"mqsidecar@baseline", "baseline", b}}, builds...)
	}
	for _, ordering := range orderings {
		for _, b := range builds {
			cs = append(cs, contender{name: b.name + " (ordering: " + ordering + ")", short: b.short + "-" + ordering, cmd: func(bin, brokers, appURL, rdir string) *exec.Cmd {
				if b.bin != "" {
					bin = b.bin
				}
				return sidecarCmd(bin, ordering, brokers, appURL, rdir, "")
			}})
		}
	}
	return onlyContenders(cs, only)
}

// onlyContenders keeps the contenders whose name contains only, when set (-only).
func onlyContenders(cs []contender, only string) ([]contender, error) {
	if only != "" {
		cs = slices.DeleteFunc(cs, func(c contender) bool { return !strings.Contains(c.name, only) })
		if len(cs) == 0 {
			return nil, fmt.Errorf("-only %q matches no contender", only)
		}
	}
	return cs, nil
}

// sidecarContender is this build of the sidecar with ordering and the configuration
// sections extra adds (YAML, each line ending in a newline).
func sidecarContender(name, short, ordering, extra string) contender {
	return contender{name: name, short: short, cmd: func(bin, brokers, appURL, rdir string) *exec.Cmd {
		return sidecarCmd(bin, ordering, brokers, appURL, rdir, extra)
	}}
}

// sidecarCmd writes the run's configuration (with the sections extra adds) into rdir and
// returns the sidecar's command.
func sidecarCmd(bin, ordering, brokers, appURL, rdir, extra string) *exec.Cmd {
	admin := `""`
	if os.Getenv("BENCH_DEBUG") != "" {
		admin = debugAdmin // BENCH_DEBUG prints the sidecar's metrics after each run
	}
	cfg := fmt.Sprintf(`source:
  kind: kafka
  kafka: {brokers: [%s], group: bench, topics: [%s], message_id: "header:message-id", commit_interval: %v}
app: {url: %q}
delivery: {ordering: %s, max_inflight: 64}
dedup: {enabled: true, path: %q}
admin: {listen: %s}
log: {level: warn}
`, brokers, topic, commitInterval, appURL, ordering, filepath.Join(rdir, "dedup.db"), admin) + extra
	path := filepath.Join(rdir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		panic(err)
	}
	return exec.Command(bin, "run", "--config", path)
}

// consumerEnv returns the consumer's environment: BENCH_CONSUMER_ENV, and the CPU profile
// file when -cpuprofile asks for one (nil: inherit the bench's).
func consumerEnv(profile string) []string {
	extra := strings.Fields(os.Getenv("BENCH_CONSUMER_ENV")) // e.g. GODEBUG=gctrace=1
	if profile != "" {
		extra = append(extra, "MQSIDECAR_CPUPROFILE="+profile)
	}
	if len(extra) == 0 {
		return nil
	}
	return append(os.Environ(), extra...)
}

// profilePath names one run's CPU profile; "" when -cpuprofile is not set.
func profilePath(prefix, scenario, app string, c contender, run int) string {
	if prefix == "" {
		return ""
	}
	if app != "" {
		scenario += "-" + strings.NewReplacer(":", "", "/", "").Replace(app)
	}
	return fmt.Sprintf("%s-%s-%s-run%d.pprof", prefix, scenario, c.short, run)
}

// workDir makes the bench's temporary directory and the sidecar binary in it (remove dir
// when done).
func workDir() (dir, bin string, err error) {
	dir, err = os.MkdirTemp("", "mqsidecar-bench-")
	if err != nil {
		return "", "", err
	}
	if bin, err = sidecarBinary(dir); err != nil {
		os.RemoveAll(dir)
		return "", "", err
	}
	return dir, bin, nil
}

// startConsumer serves app on a loopback port and starts contender c against kafka, in a
// run directory of its own under dir. stopApp closes the app's server.
func startConsumer(c contender, bin, dir string, kafka *kfake.Cluster, app http.Handler, profile string) (cmd *exec.Cmd, logs *bytes.Buffer, stopApp func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	srv := &http.Server{Handler: app}
	go func() { _ = srv.Serve(ln) }()
	stopApp = func() { _ = srv.Close() }
	rdir, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		stopApp()
		return nil, nil, nil, err
	}
	cmd = c.cmd(bin, strings.Join(kafka.ListenAddrs(), ","), "http://"+ln.Addr().String()+"/", rdir)
	logs = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if env := consumerEnv(profile); env != nil || c.env != nil {
		if env == nil {
			env = os.Environ()
		}
		env = append(env, c.env...) // what the contender sets wins
		cmd.Env = env
	}
	if err := cmd.Start(); err != nil {
		stopApp()
		return nil, nil, nil, err
	}
	return cmd, logs, stopApp, nil
}

func bench(sc scenario, apps []appProfile, runs, messages int, only, profile string) error {
	dir, bin, err := workDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	orderings := []string{sc.ordering}
	if sc.name == "key" {
		orderings = []string{"key", "partition", "none"}
	}
	var cs []contender
	if sc.tracing {
		var stop func()
		cs, stop, err = tracingContenders(only)
		if stop != nil {
			defer stop()
		}
	} else {
		cs, err = contenders(only, orderings...)
	}
	if err != nil {
		return err
	}
	if sc.keys > 0 && only == "" {
		cs = slices.Insert(cs, 1, boundContender())
	}
	// The ratios are to the first contender: the loop, or in the tracing scenario the
	// sidecar with tracing off.
	base := "the hand-written loop"
	withLoop := cs[0].name == loopName
	withBase := withLoop
	if sc.tracing {
		base, withBase = "tracing off", len(cs) > 1 && cs[0].sink == nil
	}

	fmt.Printf("mqsidecar bench, scenario %q: messages of ~100 B (16 KiB producer batches), %d partitions, dedup on, max_inflight 64, commit every %v; %d runs each, alternating; medians\n",
		sc.name, partitions, commitInterval, runs)
	fmt.Printf("  CPU is the consumer process's user+sys from its first push to the commit of the last offset, per message\n")
	var summary []string
	for _, app := range apps {
		n := app.n
		if messages > 0 {
			n = messages
		}
		fmt.Printf("\n%s, %d messages:\n", app, n)
		boundMessages = n
		results := make([][]result, len(cs))
		for r := 0; r < runs; r++ {
			for i, c := range cs {
				res, err := runOnce(sc, app, c, bin, n, dir, profilePath(profile, sc.name, app.name, c, r+1))
				if err != nil {
					return fmt.Errorf("%s, %s run %d: %w", app, c.name, r+1, err)
				}
				spans := ""
				if c.sink != nil { // the sidecar has stopped and flushed: all its spans are in
					got, errs := c.sink.take()
					if len(errs) > 0 {
						return fmt.Errorf("%s, %s run %d: the span receiver refused exports: %v", app, c.name, r+1, errs)
					}
					spans = fmt.Sprintf("  spans %d (%.2f per message)", got, float64(got)/float64(n))
				}
				fmt.Printf("  run %d %-34s %9.0f msg/s  p50 %7.1f ms  p99 %7.1f ms  RSS %5.1f MB  CPU %6.1f µs/msg (broker+app %5.1f)  %4.2f context switches/msg  order violations %d%s%s\n",
					r+1, c.name, res.rate, ms(res.p50), ms(res.p99), res.rssMB, res.cpuUs, res.benchUs, res.switches, res.order, sleptNote(res.sleptMs), spans)
				results[i] = append(results[i], res)
			}
		}
		fmt.Printf("\n%-34s %10s %10s %10s %12s %11s %9s %9s %7s\n", "median of "+strconv.Itoa(runs), "msg/s", "p50 ms", "p99 ms", "peak RSS MB", "CPU µs/msg", "msg/s vs", "CPU vs", "order")
		baseRate := median(results[0], func(r result) float64 { return r.rate })
		baseCPU := median(results[0], func(r result) float64 { return r.cpuUs })
		for i, c := range cs {
			rate := median(results[i], func(r result) float64 { return r.rate })
			cpu := median(results[i], func(r result) float64 { return r.cpuUs })
			rateRatio, cpuRatio := "-", "-"
			if withBase {
				rateRatio = fmt.Sprintf("%.2fx", rate/baseRate)
				cpuRatio = fmt.Sprintf("%.2fx", cpu/baseCPU)
			}
			order := 0
			for _, r := range results[i] {
				order += r.order
			}
			line := fmt.Sprintf("%-34s %10.0f %10.1f %10.1f %12.1f %11.1f %9s %9s %7d", c.name, rate,
				median(results[i], func(r result) float64 { return ms(r.p50) }),
				median(results[i], func(r result) float64 { return ms(r.p99) }),
				median(results[i], func(r result) float64 { return r.rssMB }),
				cpu, rateRatio, cpuRatio, order)
			fmt.Println(line)
			summary = append(summary, fmt.Sprintf("%-8s %s", app.name, line))
		}
		if sc.keys > 0 && withLoop {
			// What 64 pushes at once can deliver at the app's real latency: time.Sleep
			// overshoots on a busy machine, and the loop pushes one at a time, so its
			// own time per push shows the app's.
			slept := median(results[0], func(r result) float64 { return r.sleptMs })
			fmt.Printf("ceiling: max_inflight 64 / the app's time per push (%.2f ms slept, median of the loop's runs) = %.0f msg/s; the loop's time per message %.2f ms\n",
				slept, 64/slept*1000, 1000/baseRate)
			if i := slices.IndexFunc(cs, func(c contender) bool { return c.name == boundName }); i >= 0 {
				b := median(results[i], func(r result) float64 { return r.rate })
				fmt.Printf("bound: %.0f msg/s, 64 plain HTTP clients pushing from memory to the same app (%.2f ms per push, %.2f ms of it slept);", b, 64/b*1000,
					median(results[i], func(r result) float64 { return r.sleptMs }))
				for j, c := range cs {
					if strings.HasPrefix(c.name, "mqsidecar") {
						fmt.Printf(" %s %.2fx of it;", c.name, median(results[j], func(r result) float64 { return r.rate })/b)
					}
				}
				fmt.Println()
			}
		}
	}
	if len(apps) > 1 {
		fmt.Printf("\nsummary, scenario %q (medians of %d runs; ratios to %s of the same profile; order = violations in all runs):\n", sc.name, runs, base)
		fmt.Printf("  %-8s %-34s %10s %10s %10s %12s %11s %9s %9s %7s\n", "app", "", "msg/s", "p50 ms", "p99 ms", "peak RSS MB", "CPU µs/msg", "msg/s vs", "CPU vs", "order")
		for _, l := range summary {
			fmt.Println("  " + l)
		}
	}
	return nil
}

func runOnce(sc scenario, app appProfile, c contender, bin string, n int, dir, profile string) (result, error) {
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		return result{}, err
	}
	defer kafka.Close()
	ends, err := produce(kafka.ListenAddrs(), n, sc.keys)
	if err != nil {
		return result{}, fmt.Errorf("produce: %w", err)
	}
	a := newApp(ends, app)
	benchCPU := cpuSeconds(os.Getpid())
	cmd, logs, stopApp, err := startConsumer(c, bin, dir, kafka, a, profile)
	if err != nil {
		return result{}, err
	}
	defer stopApp()
	a.pid.Store(int64(cmd.Process.Pid))
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()

	// Poll committed offsets until every partition is fully committed.
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...))
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	committed := make([]int64, partitions)
	deadline := time.Now().Add(5 * time.Minute)
	var rss float64
	for {
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("not fully committed after 5 minutes; logs:\n%s", tail(logs.String()))
		}
		if cmd.ProcessState != nil {
			return result{}, fmt.Errorf("consumer exited; logs:\n%s", tail(logs.String()))
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
		if rs := peakRSS(cmd.Process.Pid); rs > rss {
			rss = rs
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
	cpuEnd, switchesEnd := processCPU(cmd.Process.Pid), contextSwitches(cmd.Process.Pid)
	res := a.result(n)
	res.rssMB = rss
	res.cpuUs = (cpuEnd - a.firstCPU()).Seconds() * 1e6 / float64(n)
	res.benchUs = (cpuSeconds(os.Getpid()) - benchCPU) * 1e6 / float64(n)
	res.switches = float64(switchesEnd-a.switchesAtFirst) / float64(n)
	if app.delay > 0 {
		a.mu.Lock()
		res.sleptMs = float64(a.slept.Load()) / 1e6 / float64(max(a.pushes, 1))
		a.mu.Unlock()
	}
	if os.Getenv("BENCH_DEBUG") != "" {
		fmt.Println(logs.String())
		if strings.HasPrefix(c.name, "mqsidecar") {
			printMetrics()
		}
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Rss") || strings.HasPrefix(l, "VmHWM") {
				fmt.Println("   ", l)
			}
		}
	}
	return res, nil
}

// produce writes n records round-robin over the partitions and returns each partition's end
// offset.
func produce(brokers []string, n, keys int) ([]int64, error) {
	return produceRecords(brokers, n, func(i int) *kgo.Record {
		// ~100 B of JSON that compresses like real events do (not a run of one byte).
		payload := fmt.Appendf(nil, `{"order":%d,"customer":"c-%05d","amount":%d.%02d,"sku":"%08x","note":"bench"}`,
			i, i%9973, i%997, i%100, uint32(i)*2654435761)
		r := &kgo.Record{Value: payload}
		if keys > 0 {
			r.Key = []byte("key-" + strconv.Itoa(i%keys))
		}
		return r
	}, kgo.ProducerLinger(5*time.Millisecond),
		// 16 KiB batches: the Java producer's default batch.size, what most topics hold.
		kgo.ProducerBatchMaxBytes(16<<10))
}

// produceRecords writes the n records that record(i) returns round-robin over the
// partitions, each with a message-id header, and returns each partition's end offset.
func produceRecords(brokers []string, n int, record func(i int) *kgo.Record, opts ...kgo.Opt) ([]int64, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner())}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends := make([]int64, partitions)
	var wg sync.WaitGroup
	var failed atomic.Value
	for i := 0; i < n; i++ {
		r := record(i)
		r.Partition = int32(i % partitions)
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: "message-id", Value: []byte("m-" + strconv.Itoa(i))})
		ends[r.Partition]++
		wg.Add(1)
		cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Store(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return nil, err
	}
	return ends, nil
}

// app answers 200 (after its profile's sleep or work) and records when each
// partition/offset arrived.
type app struct {
	delay   time.Duration
	mu      sync.Mutex
	pushAt  [][]int64 // [partition][offset] unix nanos of the first push
	commit  [][]int64
	first   time.Time
	last    time.Time
	lastKey map[string]int64 // key → last offset pushed, for order checks
	order   int
	pushes  int          // every push, redeliveries included
	slept   atomic.Int64 // nanoseconds the app spent in its delay (sleeps overshoot under load)

	work int          // SHA-256 rounds per push (the CPU-bound handler)
	pid  atomic.Int64 // the consumer's process
	// cpuAtFirst is the consumer's CPU time when the first push arrived (read through
	// firstCPU).
	cpuAtFirst      time.Duration
	switchesAtFirst int64 // the consumer's context switches then
	firstOnce       sync.Once
}

func newApp(ends []int64, profile appProfile) *app {
	a := &app{delay: profile.delay, work: profile.work, lastKey: map[string]int64{}}
	for _, e := range ends {
		a.pushAt = append(a.pushAt, make([]int64, e))
		a.commit = append(a.commit, make([]int64, e))
	}
	return a
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.firstOnce.Do(func() {
		if pid := a.pid.Load(); pid > 0 {
			a.cpuAtFirst = processCPU(int(pid))
			a.switchesAtFirst = contextSwitches(int(pid))
		}
	})
	_, _ = io.Copy(io.Discard, r.Body)
	if a.delay > 0 {
		t := time.Now()
		time.Sleep(a.delay)
		a.slept.Add(int64(time.Since(t)))
	}
	if a.work > 0 {
		var buf [1024]byte
		for range a.work {
			sum := sha256.Sum256(buf[:])
			buf[0] ^= sum[0]
		}
	}
	p, err1 := strconv.Atoi(r.Header.Get("ce-partition"))
	off, err2 := strconv.ParseInt(r.Header.Get("ce-offset"), 10, 64)
	now := time.Now()
	if err1 == nil && err2 == nil && p < len(a.pushAt) && off < int64(len(a.pushAt[p])) {
		a.mu.Lock()
		a.pushes++
		if a.first.IsZero() {
			a.first = now
		}
		if a.pushAt[p][off] == 0 {
			a.pushAt[p][off] = now.UnixNano()
		}
		if k := r.Header.Get("ce-partitionkey"); k != "" {
			lk := strconv.Itoa(p) + "/" + k
			if last, ok := a.lastKey[lk]; ok && off < last {
				a.order++
			}
			a.lastKey[lk] = off
		}
		a.mu.Unlock()
	}
	w.WriteHeader(http.StatusOK)
}

// sleptNote describes the app's actual delay per push ("" for an app that does not sleep).
func sleptNote(ms float64) string {
	if ms == 0 {
		return ""
	}
	return fmt.Sprintf("  app slept %.2f ms/push", ms)
}

// firstCPU is the consumer's CPU time when the first push arrived.
func (a *app) firstCPU() time.Duration {
	a.firstOnce.Do(func() {}) // waits for the first push's Do to finish
	return a.cpuAtFirst
}

func (a *app) committed(p int32, from, to int64, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for o := from; o < to && o < int64(len(a.commit[p])); o++ {
		a.commit[p][o] = at.UnixNano()
	}
	if at.After(a.last) {
		a.last = at
	}
}

func (a *app) result(n int) result {
	a.mu.Lock()
	defer a.mu.Unlock()
	var lat []time.Duration
	for p := range a.pushAt {
		for o, push := range a.pushAt[p] {
			if push != 0 && a.commit[p][o] != 0 {
				lat = append(lat, time.Duration(a.commit[p][o]-push))
			}
		}
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(q*float64(len(lat)-1))]
	}
	return result{rate: float64(n) / a.last.Sub(a.first).Seconds(), p50: pct(0.5), p99: pct(0.99), order: a.order}
}

// baseline is the hand-written consumer the issue compares against: poll a batch, POST each
// record in order, commit the batch synchronously, repeat. An interrupt stops it between
// two pushes (so that its CPU profile, if any, is written).
func baseline(brokers []string, appURL string) error {
	cl, err := groupConsumer(brokers)
	if err != nil {
		return err
	}
	defer cl.Close()
	hc := &http.Client{Timeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	for {
		recs, done, err := poll(ctx, cl, 500)
		if done || err != nil {
			return err
		}
		for _, r := range recs {
			if ctx.Err() != nil {
				return nil
			}
			pushUntilDone(ctx, hc, appURL, r, true)
		}
		if len(recs) > 0 {
			if err := cl.CommitRecords(ctx, recs...); err != nil {
				return err
			}
		}
	}
}

// boundName is the contender that shows what any consumer with 64 pushes in flight can
// reach on this machine against the bench's app (bound).
const boundName = "bound: 64 pushes at once"

func boundContender() contender {
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return contender{name: boundName, short: "bound", cmd: func(_ string, brokers, appURL, _ string) *exec.Cmd {
		return exec.Command(self, "-mode", "bound", "-brokers", brokers, "-app", appURL, "-messages", strconv.Itoa(boundMessages))
	}}
}

// boundMessages is the messages the bound contender reads before it pushes (bench sets it per
// app profile, before starting the contender).
var boundMessages int

// bound reads all n records first, then pushes them from memory with 64 plain net/http
// clients at once, in no order and with nothing stored, and commits them at the end: the
// most 64 pushes in flight deliver with this app on this machine, whatever the consumer.
func bound(brokers []string, appURL string, n int) error {
	cl, err := groupConsumer(brokers)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var recs []*kgo.Record
	for len(recs) < n {
		more, done, err := poll(ctx, cl, 0)
		if done || err != nil {
			return err
		}
		recs = append(recs, more...)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	work := make(chan *kgo.Record)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for r := range work {
				pushUntilDone(ctx, hc, appURL, r, false) // no key: pushed in no order
			}
		})
	}
	for _, r := range recs {
		work <- r
	}
	close(work)
	wg.Wait()
	return cl.CommitRecords(ctx, recs...)
}

// groupConsumer joins the bench's consumer group on the bench topic from its start; it
// commits only what its caller commits.
func groupConsumer(brokers []string) (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup("bench"), kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
}

// poll returns the records of one poll (at most most; most <= 0: a fetch's worth), the
// first fetch error, or done when ctx ended or cl was closed.
func poll(ctx context.Context, cl *kgo.Client, most int) (recs []*kgo.Record, done bool, err error) {
	fs := cl.PollRecords(ctx, most)
	if fs.IsClientClosed() || ctx.Err() != nil {
		return nil, true, nil
	}
	fs.EachError(func(_ string, _ int32, e error) { err = e })
	if err != nil {
		return nil, false, err
	}
	return fs.Records(), false, nil
}

// pushUntilDone POSTs r to the app, with its partition and offset (and its key, for the
// app's order check, when withKey), until the app answers 2xx or ctx ends.
func pushUntilDone(ctx context.Context, hc *http.Client, appURL string, r *kgo.Record, withKey bool) {
	for ctx.Err() == nil {
		req, _ := http.NewRequest(http.MethodPost, appURL, bytes.NewReader(r.Value))
		req.Header.Set("ce-partition", strconv.Itoa(int(r.Partition)))
		req.Header.Set("ce-offset", strconv.FormatInt(r.Offset, 10))
		if withKey && len(r.Key) > 0 {
			req.Header.Set("ce-partitionkey", string(r.Key))
		}
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const debugAdmin = "127.0.0.1:19464"

// printMetrics prints the sidecar's own counters that explain a run (dedup commits, pushes).
func printMetrics() {
	resp, err := http.Get("http://" + debugAdmin + "/metrics")
	if err != nil {
		fmt.Println("    metrics:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "mqsidecar_") && !strings.Contains(l, "_bucket{") {
			fmt.Println("   ", l)
		}
	}
}

// peakRSS reads VmHWM (peak resident set) of pid in MB; 0 when unavailable.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

// processCPU is the CPU time (user+system, all threads) pid has used: its process CPU
// clock (clock_gettime on the clock clock_getcpuclockid names), exact to the nanosecond,
// where /proc/<pid>/stat counts 10 ms ticks; the ticks when the clock is unavailable.
func processCPU(pid int) time.Duration {
	clock := uintptr(int32(^uint32(pid)<<3 | 2)) // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clock, uintptr(unsafe.Pointer(&ts)), 0); errno == 0 {
		return time.Duration(ts.Nano())
	}
	return time.Duration(cpuSeconds(pid) * float64(time.Second))
}

// contextSwitches sums the voluntary and involuntary context switches of pid's threads
// (/proc/<pid>/task/*/status); 0 when unavailable.
func contextSwitches(pid int) int64 {
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				k, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += k
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				k, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += k
			}
		}
	}
	return n
}

// startProfile writes a CPU profile of this process to path until the returned function is
// called (the hand-written loop honours MQSIDECAR_CPUPROFILE as the sidecar does).
func startProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// boxCPU reads the machine's CPU time in seconds from /proc/stat (procfs): all of it, and
// the part stolen by the hypervisor for other guests (0, 0 when unavailable).
func boxCPU() (total, steal float64) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, 0
	}
	st, err := fs.Stat()
	if err != nil {
		return 0, 0
	}
	c := st.CPUTotal
	return c.User + c.Nice + c.System + c.Idle + c.Iowait + c.IRQ + c.SoftIRQ + c.Steal, c.Steal
}

// stealShare is the share of the machine's CPU time stolen between two boxCPU readings.
func stealShare(total0, steal0, total1, steal1 float64) float64 {
	if total1 <= total0 {
		return 0
	}
	return (steal1 - steal0) / (total1 - total0)
}

// cpuSeconds reads utime+stime of pid from /proc (clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}
