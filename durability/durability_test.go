package durability

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/config"
)

func chk(check, target string, v adapters.Verdict) adapters.DurabilityCheck {
	c := adapters.DurabilityCheck{Check: check, Target: target, Value: "v", Source: "s", Verdict: v}
	if v != adapters.VerdictOK {
		c.Fix = "fix it"
	}
	return c
}

func TestReportVerdictAndExitCode(t *testing.T) {
	ok, risk, unknown := adapters.VerdictOK, adapters.VerdictAtRisk, adapters.VerdictUnknown
	for _, tc := range []struct {
		checks []adapters.DurabilityCheck
		want   adapters.Verdict
		code   int
	}{
		{[]adapters.DurabilityCheck{chk("a", "t", ok), chk("b", "t", ok)}, ok, ExitOK},
		{[]adapters.DurabilityCheck{chk("a", "t", ok), chk("b", "t", unknown)}, unknown, ExitAtRisk},
		{[]adapters.DurabilityCheck{chk("a", "t", unknown), chk("b", "t", risk), chk("c", "t", ok)}, risk, ExitAtRisk},
	} {
		r := Report{Kind: "kafka", Checks: tc.checks}
		if r.Verdict() != tc.want || r.ExitCode() != tc.code {
			t.Errorf("%+v: verdict %s exit %d, want %s %d", tc.checks, r.Verdict(), r.ExitCode(), tc.want, tc.code)
		}
	}
}

func TestReportOutputs(t *testing.T) {
	r := Report{Kind: "kafka", Checks: []adapters.DurabilityCheck{chk("replication_factor", "orders", adapters.VerdictAtRisk), chk("producer_acks", "dlq", adapters.VerdictOK)}}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "CHECK") || !strings.Contains(lines[1], "AT RISK") || !strings.Contains(lines[1], "fix it") ||
		lines[4] != "kafka: at risk (1 ok, 1 at risk, 0 unknown)" {
		t.Errorf("table:\n%s", table.String())
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Kind    string                     `json:"kind"`
		Verdict string                     `json:"verdict"`
		Exit    int                        `json:"exit_code"`
		Checks  []adapters.DurabilityCheck `json:"checks"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Kind != "kafka" || got.Verdict != "at risk" || got.Exit != 3 || len(got.Checks) != 2 || got.Checks[0] != r.Checks[0] {
		t.Errorf("json: %s", js.String())
	}
}

// logLines returns the JSON log records written to buf.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// The runner logs one line per verdict change (not per check run), keeps the gauge and the
// readiness details, and says once that it cannot check, and once that it can again.
func TestRunnerLogsChangesOnly(t *testing.T) {
	ok, risk := adapters.VerdictOK, adapters.VerdictAtRisk
	var mu sync.Mutex
	var next Report
	var nextErr error
	set := func(r Report, err error) { mu.Lock(); next, nextErr = r, err; mu.Unlock() }
	check := func(context.Context) (Report, error) { mu.Lock(); defer mu.Unlock(); return next, nextErr }
	var logs bytes.Buffer
	gauge := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "g"}, []string{"check", "target"})
	r := NewRunner(check, time.Minute, slog.New(slog.NewJSONHandler(&logs, nil)), gauge)
	ctx := context.Background()

	if d := r.Details(); d != "durability: not checked yet" {
		t.Errorf("details before a check: %q", d)
	}
	set(Report{Kind: "kafka", Checks: []adapters.DurabilityCheck{chk("min_insync_replicas", "orders", risk), chk("replication_factor", "orders", ok)}}, nil)
	_, _ = r.Once(ctx)
	_, _ = r.Once(ctx) // unchanged: no log line
	lines := logLines(t, &logs)
	if len(lines) != 2 || lines[0]["level"] != "WARN" || lines[0]["check"] != "min_insync_replicas" || lines[0]["fix"] != "fix it" ||
		lines[1]["level"] != "INFO" || lines[1]["verdict"] != "ok" {
		t.Fatalf("first verdicts: %v", lines)
	}
	if v := gaugeValue(gauge, "min_insync_replicas", "orders"); v != 0 {
		t.Errorf("gauge of an at-risk check = %v, want 0", v)
	}
	if v := gaugeValue(gauge, "replication_factor", "orders"); v != 1 {
		t.Errorf("gauge of an ok check = %v, want 1", v)
	}
	if d := r.Details(); !strings.Contains(d, "at risk: min_insync_replicas orders=v (at risk)") || strings.Contains(d, "replication_factor") {
		t.Errorf("details: %q", d)
	}

	// The broker goes away: one line, twice checked; details say why.
	logs.Reset()
	set(Report{Kind: "kafka"}, errors.New("could not connect: refused"))
	_, _ = r.Once(ctx)
	_, _ = r.Once(ctx)
	if lines := logLines(t, &logs); len(lines) != 1 || lines[0]["msg"] != "broker durability: cannot check" {
		t.Errorf("unreachable: %v", lines)
	}
	if d := r.Details(); d != "durability: cannot check: could not connect: refused" {
		t.Errorf("details: %q", d)
	}

	// It comes back fixed, and one check is gone (its series is deleted).
	logs.Reset()
	set(Report{Kind: "kafka", Checks: []adapters.DurabilityCheck{chk("min_insync_replicas", "orders", ok)}}, nil)
	_, _ = r.Once(ctx)
	lines = logLines(t, &logs)
	if len(lines) != 2 || lines[0]["msg"] != "broker durability: checking again" || lines[1]["verdict"] != "ok" || lines[1]["check"] != "min_insync_replicas" {
		t.Errorf("recovered: %v", lines)
	}
	if n := len(gaugeSeries(gauge)); n != 1 {
		t.Errorf("gauge series = %d, want 1 (the vanished check's series deleted)", n)
	}
	if d := r.Details(); d != "durability: ok (1 checks)" {
		t.Errorf("details: %q", d)
	}
}

func TestRequire(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	atRisk := Report{Kind: "rocketmq", Checks: []adapters.DurabilityCheck{chk("flush_disk_type", "broker-a", adapters.VerdictAtRisk)}}
	safe := Report{Kind: "rocketmq", Checks: []adapters.DurabilityCheck{chk("flush_disk_type", "broker-a", adapters.VerdictOK)}}
	ctx := context.Background()
	if err := NewRunner(func(context.Context) (Report, error) { return atRisk, nil }, 0, log, nil).Require(ctx); !errors.Is(err, ErrAtRisk) {
		t.Errorf("at risk: %v, want ErrAtRisk", err)
	}
	if err := NewRunner(func(context.Context) (Report, error) { return safe, nil }, 0, log, nil).Require(ctx); err != nil {
		t.Errorf("safe: %v", err)
	}
	// Unreachable at first: retried until the verdict is known.
	calls := 0
	flaky := func(context.Context) (Report, error) {
		calls++
		if calls == 1 {
			return Report{}, ErrUnreachable
		}
		return safe, nil
	}
	if err := NewRunner(flaky, 0, log, nil).Require(ctx); err != nil || calls != 2 {
		t.Errorf("flaky: %v after %d calls", err, calls)
	}
	// A configuration that cannot work is not retried.
	bad := func(context.Context) (Report, error) { return Report{}, ErrConfig }
	if err := NewRunner(bad, 0, log, nil).Require(ctx); !errors.Is(err, ErrConfig) {
		t.Errorf("bad config: %v", err)
	}
	// Stopped while the broker is unreachable: ctx's error.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	down := func(context.Context) (Report, error) { return Report{}, ErrUnreachable }
	if err := NewRunner(down, 0, log, nil).Require(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("stopped: %v", err)
	}
}

// Check bounds an unanswered broker by Timeout (here the caller's shorter deadline) and
// says it could not connect.
func TestCheckUnreachableKinds(t *testing.T) {
	for _, cfg := range []config.Config{
		func() config.Config {
			c := config.Defaults()
			c.Source.Kind, c.Source.Kafka.Brokers, c.Source.Kafka.Topics = "kafka", []string{"127.0.0.1:1"}, []string{"t"}
			return c
		}(),
		func() config.Config {
			c := config.Defaults()
			c.Source.Kind, c.Source.RabbitMQ.URL, c.Source.RabbitMQ.Queue = "rabbitmq", "amqp://u:secret@127.0.0.1:1/", "q"
			return c
		}(),
		func() config.Config {
			c := config.Defaults()
			c.Source.Kind, c.Source.RocketMQ.Nameservers, c.Source.RocketMQ.Topic = "rocketmq", []string{"127.0.0.1:1"}, "t"
			return c
		}(),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := Check(ctx, cfg)
		cancel()
		if !errors.Is(err, ErrUnreachable) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v, want ErrUnreachable without the password", cfg.Source.Kind, err)
		}
	}
}

// gaugeSeries returns every series of g: "check/target" → value.
func gaugeSeries(g *prometheus.GaugeVec) map[string]float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { g.Collect(ch); close(ch) }()
	out := map[string]float64{}
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		var labels []string
		for _, l := range d.GetLabel() {
			labels = append(labels, l.GetValue())
		}
		out[strings.Join(labels, "/")] = d.GetGauge().GetValue()
	}
	return out
}

func gaugeValue(g *prometheus.GaugeVec, check, target string) float64 {
	v, ok := gaugeSeries(g)[check+"/"+target]
	if !ok {
		return -1
	}
	return v
}

// A broker that accepts connections and never answers: Check returns at its deadline (the
// Kafka client alone would take its 10 s request timeout, then redial).
func TestCheckBoundedBySilentBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn
		for {
			c, err := l.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	cfg := config.Defaults()
	cfg.Source.Kafka.Brokers, cfg.Source.Kafka.Topics = []string{l.Addr().String()}, []string{"t"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err = Check(ctx, cfg)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "no answer within") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("err = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Check took %v with a 1 s deadline", took)
	}
}
