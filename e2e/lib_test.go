package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// buildDir holds the binary built for this run; TestMain removes it.
var buildDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mqsidecar-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// sidecarBinary returns the mqsidecar binary under test: $MQSIDECAR_BIN when set (the
// Makefile builds it once for the e2e run), else ./cmd/mqsidecar built once per test run.
// MQSIDECAR_E2E_RACE=1 builds it with the race detector.
func sidecarBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("MQSIDECAR_BIN"); p != "" {
			if _, err := os.Stat(p); err != nil {
				binErr = fmt.Errorf("MQSIDECAR_BIN=%s: %w", p, err)
			}
			binPath = p
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			binErr = fmt.Errorf("building the binary needs the go tool: %w", err)
			return
		}
		binPath = filepath.Join(buildDir, "mqsidecar")
		args := []string{"build", "-o", binPath}
		if os.Getenv("MQSIDECAR_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		args = append(args, "github.com/mqsidecar/mqsidecar/cmd/mqsidecar")
		t0 := time.Now()
		out, err := exec.Command(goTool, args...).CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", binPath, time.Since(t0).Round(time.Millisecond))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// e2eDelivery is the delivery section of most e2e configs (lines under "delivery:"): fast
// retries, so that a test does not wait for the production backoff.
const e2eDelivery = "  max_inflight: 64\n  backoff: {initial: 20ms, max: 500ms, multiplier: 2}"

// sidecarYAML is the one sidecar config of the e2e tests: source.kind and its section
// (section: the lines under source.<kind>, indented by four spaces), the app, the delivery
// section (lines under "delivery:", indented by two spaces; e2eDelivery in most tests), the
// dedup file, an ephemeral admin port, shutdown_timeout 10s and JSON logs at info. extra is
// appended verbatim (top-level keys).
func sidecarYAML(kind, section, appURL, delivery, dedupPath, extra string) string {
	return fmt.Sprintf(`# written by the e2e tests
source:
  kind: %s
  %s:
%s
app:
  url: %s
  timeout: 5s
delivery:
%s
dedup:
  path: %s
admin:
  listen: 127.0.0.1:0
shutdown_timeout: 10s
log: {level: info, format: json}
%s`, kind, kind, strings.TrimRight(section, "\n"), appURL, strings.TrimRight(delivery, "\n"), dedupPath, extra)
}

// sidecarConfig is one config file and every process started from it, so that failure
// output can show all their logs. Create it with newSidecarConfig.
type sidecarConfig struct {
	t    *testing.T
	name string
	path string
	env  []string

	mu    sync.Mutex
	procs []*sidecarProc
}

// newSidecarConfig writes yaml to a file in a temp dir. env (KEY=VALUE) is added to every
// process's environment. On test failure the cleanup prints the tail of every process log;
// processes still running at the end are killed.
func newSidecarConfig(t *testing.T, name, yaml string, env ...string) *sidecarConfig {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &sidecarConfig{t: t, name: name, path: path, env: env}
	t.Cleanup(func() {
		c.mu.Lock()
		procs := append([]*sidecarProc(nil), c.procs...)
		c.mu.Unlock()
		for _, p := range procs {
			if p.running() {
				p.kill()
			}
		}
		if t.Failed() {
			t.Logf("config %s:\n%s", path, yaml)
			for _, p := range procs {
				t.Logf("---- %s (%s) ----\n%s", p.label, p.exitString(), p.logTail(60))
			}
		}
	})
	return c
}

// sidecarProc is one running (or exited) `mqsidecar run` process.
type sidecarProc struct {
	t     *testing.T
	label string
	log   string // stdout and stderr, kept for failure output
	cmd   *exec.Cmd
	admin string // host:port of /readyz, /metrics

	done  chan struct{} // closed when the process has exited
	state *os.ProcessState
	err   error
}

// start starts a process and waits until /readyz answers 200 (within 60 s). The admin
// listener gets a free port picked just before; if another process took it meanwhile, the
// start is retried with another.
func (c *sidecarConfig) start() *sidecarProc {
	c.t.Helper()
	for try := 1; ; try++ {
		p := c.startNoWait()
		err := p.waitReady(60 * time.Second)
		if err == nil {
			return p
		}
		if try < 3 && !p.running() && strings.Contains(p.logTail(20), "address already in use") {
			continue
		}
		p.fatalf("sidecar not ready: %v", err)
	}
}

// startNoWait starts a process without waiting for readiness.
func (c *sidecarConfig) startNoWait(extraEnv ...string) *sidecarProc {
	c.t.Helper()
	bin := sidecarBinary(c.t)
	c.mu.Lock()
	n := len(c.procs) + 1
	c.mu.Unlock()
	label := fmt.Sprintf("%s#%d", c.name, n)
	logPath := filepath.Join(filepath.Dir(c.path), fmt.Sprintf("%s-%d.log", c.name, n))
	f, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	admin := freeAddr(c.t)
	cmd := exec.Command(bin, "run", "--config", c.path)
	cmd.Stdout, cmd.Stderr = f, f
	// The admin port is per process: MQSIDECAR_ADMIN_LISTEN overrides the file (and tests
	// the environment override path on every start).
	cmd.Env = append(append(append(os.Environ(), c.env...), extraEnv...), "MQSIDECAR_ADMIN_LISTEN="+admin)
	p := &sidecarProc{t: c.t, label: label, log: logPath, cmd: cmd, admin: admin, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", label, err)
	}
	go func() {
		p.err = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

func (p *sidecarProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// waitReady polls /readyz until it answers 200, the process exits, or timeout passes.
func (p *sidecarProc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why := p.readyz()
		if ok {
			return nil
		}
		last = why
		if !p.running() {
			return fmt.Errorf("%s exited (%s) before it was ready", p.label, p.exitString())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s; last /readyz: %s", p.label, timeout, last)
		}
		select {
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var adminClient = &http.Client{Timeout: 2 * time.Second}

// readyz reports whether /readyz answered 200, and what it said otherwise.
func (p *sidecarProc) readyz() (bool, string) {
	resp, err := adminClient.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode == http.StatusOK, fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body))
}

// metric returns the sum of all series of a counter or gauge from /metrics.
func (p *sidecarProc) metric(name string) (float64, error) {
	resp, err := adminClient.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || len(line) == len(name) || (line[len(name)] != ' ' && line[len(name)] != '{') {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exposed", name)
	}
	return sum, nil
}

// kill sends SIGKILL and waits for the exit.
func (p *sidecarProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Kill9 kills the process as `kill -9` does; nothing is flushed or committed.
func (p *sidecarProc) Kill9() {
	p.t.Helper()
	if !p.running() {
		p.fatalf("kill -9: %s had already exited (%s)", p.label, p.exitString())
	}
	p.kill()
}

// Term sends SIGTERM and requires exit status 0 within bound (G5 in docs/guarantees.md).
func (p *sidecarProc) Term(bound time.Duration) {
	p.t.Helper()
	t0 := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.fatalf("SIGTERM: %v", err)
	}
	code, ok := p.Wait(bound)
	if !ok {
		p.kill()
		p.fatalf("still running %s after SIGTERM (bound %s)", time.Since(t0).Round(time.Millisecond), bound)
	}
	if code != 0 {
		p.fatalf("exit status %d after SIGTERM, want 0", code)
	}
	p.t.Logf("%s: SIGTERM → exit 0 in %s", p.label, time.Since(t0).Round(time.Millisecond))
}

// Wait waits up to timeout for the process to exit and returns its exit status (-1 when
// killed by a signal); ok is false on timeout.
func (p *sidecarProc) Wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.state.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

func (p *sidecarProc) exitString() string {
	if p.running() {
		return "running"
	}
	if p.state == nil {
		return fmt.Sprintf("not started: %v", p.err)
	}
	return p.state.String()
}

// logText returns the whole log.
func (p *sidecarProc) logText() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", p.log, err)
	}
	return string(b)
}

// logTail returns the last n lines of the log.
func (p *sidecarProc) logTail(n int) string {
	return tailLines(p.logText(), n)
}

// fatalf fails the test with the log tail of this process.
func (p *sidecarProc) fatalf(format string, args ...any) {
	p.t.Helper()
	p.t.Fatalf("%s: %s\n---- log tail of %s (%s) ----\n%s", p.label, fmt.Sprintf(format, args...), p.label, p.exitString(), p.logTail(40))
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeAddr returns 127.0.0.1:<port> with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// lagZero is a waitFor condition: lag (a broker's count of records not yet committed, and
// a description of where) reaches 0.
func lagZero(lag func() (int64, string, error)) func() (bool, string) {
	return func() (bool, string) {
		n, desc, err := lag()
		if err != nil {
			return false, err.Error()
		}
		return n == 0, fmt.Sprintf("lag %d: %s", n, desc)
	}
}

// waitFor polls cond every interval until it returns true or timeout passes; on timeout it
// fails the test with desc and what cond last said, plus extra() when given (a log tail).
func waitFor(t testing.TB, timeout time.Duration, desc string, cond func() (bool, string), extra ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 20 * time.Millisecond
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %s waiting for %s; last state: %s", timeout, desc, why)
			for _, e := range extra {
				msg += "\n" + e()
			}
			t.Fatal(msg)
		}
		time.Sleep(interval)
		if interval < 200*time.Millisecond {
			interval += 10 * time.Millisecond
		}
	}
}

// connCounter is a TCP listener that counts the connections made to it and closes them:
// the target for "must not connect anywhere" checks.
type connCounter struct {
	ln net.Listener
	n  atomic.Int64
}

func newConnCounter(t testing.TB) *connCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &connCounter{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.n.Add(1)
			conn.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return c
}

func (c *connCounter) addr() string { return c.ln.Addr().String() }

// cliResult is the outcome of one CLI invocation.
type cliResult struct {
	code   int
	output string // stdout and stderr
	took   time.Duration
}

// runCLI runs the binary with args and env, killing it after timeout.
func runCLI(t testing.TB, timeout time.Duration, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, sidecarBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	res := cliResult{output: out.String(), took: time.Since(t0)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("mqsidecar %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("mqsidecar %s: still running after %s\n%s", strings.Join(args, " "), timeout, res.output)
	}
	return res
}

// readyWatch records /readyz answers of a process, sampled every interval, as transitions.
type readyWatch struct {
	p          *sidecarProc
	t0         time.Time
	quit, done chan struct{}
	changes    []string // "12.3s ready" / "13.1s not ready: ..."
	last       *bool
	sawFalse   bool
}

// sample takes one /readyz answer and records a transition. Called by one goroutine at a
// time (the sampler, then stop).
func (w *readyWatch) sample() {
	ok, why := w.p.readyz()
	if w.last != nil && *w.last == ok {
		return
	}
	s := fmt.Sprintf("%.1fs ready", time.Since(w.t0).Seconds())
	if !ok {
		s = fmt.Sprintf("%.1fs not ready: %s", time.Since(w.t0).Seconds(), why)
		w.sawFalse = true
	}
	w.changes = append(w.changes, s)
	w.last = &ok
}

// watchReady starts sampling p's readiness; stop it with (*readyWatch).stop.
func watchReady(p *sidecarProc, interval time.Duration) *readyWatch {
	w := &readyWatch{p: p, t0: time.Now(), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			w.sample()
			select {
			case <-w.quit:
				return
			case <-time.After(interval):
			}
		}
	}()
	return w
}

// stop ends the sampling, takes a last sample (so a state the caller just waited for is
// included), and returns whether /readyz was seen false and the transitions.
func (w *readyWatch) stop() (sawFalse bool, changes []string) {
	close(w.quit)
	<-w.done
	w.sample()
	return w.sawFalse, w.changes
}
