// Package demo runs the whole product in one process so a newcomer can watch it work: an
// embedded Kafka (franz-go's kfake), a demo app that fails a share of first attempts, a
// producer that sends some messages twice (as a producer retry would), and the real sidecar
// (package sidecar, the same code `mqsidecar run` executes). It prints a progress line per
// second and ends with a summary; it fails when any message was lost or silently pushed
// twice.
package demo

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/metrics"
	"github.com/mqsidecar/mqsidecar/sidecar"
)

// Options configures a demo run.
type Options struct {
	Out           io.Writer
	Messages      int     // unique messages
	DuplicateRate float64 // share of messages produced twice
	FailRate      float64 // share of first pushes the app fails
	Verbose       bool    // show the sidecar's logs
	Rate          int     // messages produced per second (0 = as fast as possible)
	Timeout       time.Duration
}

const (
	topic      = "orders"
	partitions = 8
)

// Run executes the demo; it returns an error when a message was lost, silently duplicated,
// or the run did not finish in time.
func Run(ctx context.Context, o Options) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Messages <= 0 {
		o.Messages = 3000
	}
	if o.Timeout == 0 {
		o.Timeout = 50 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	start := time.Now()

	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		return fmt.Errorf("demo: start embedded kafka: %w", err)
	}
	defer kafka.Close()

	app := &app{failRate: o.FailRate, seen: map[string]*seen{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: app listen: %w", err)
	}
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	dir, err := os.MkdirTemp("", "mqsidecar-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	cfg := config.Defaults()
	cfg.Source.Kind = "kafka"
	cfg.Source.Kafka.Brokers = kafka.ListenAddrs()
	cfg.Source.Kafka.Group = "demo"
	cfg.Source.Kafka.Topics = []string{topic}
	cfg.Source.Kafka.MessageID = "header:message-id"
	cfg.Source.Kafka.CommitInterval = 200 * time.Millisecond
	cfg.App.URL = "http://" + ln.Addr().String() + "/messages"
	cfg.Delivery.Backoff = config.Backoff{Initial: 50 * time.Millisecond, Max: time.Second, Multiplier: 2}
	cfg.Dedup.Path = filepath.Join(dir, "dedup.db")
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	logOut := io.Discard
	if o.Verbose {
		logOut = o.Out
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelInfo}))

	sc, err := sidecar.New(cfg, log)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(o.Out, "mqsidecar demo: embedded Kafka %v (topic %q, %d partitions), app %s, admin http://%s/metrics\n",
		cfg.Source.Kafka.Brokers, topic, partitions, cfg.App.URL, sc.AdminAddr())
	fmt.Fprintf(o.Out, "producing %d messages (%.0f%% sent twice); the app fails %.0f%% of first attempts\n\n",
		o.Messages, o.DuplicateRate*100, o.FailRate*100)

	runCtx, stopSidecar := context.WithCancel(context.Background())
	defer stopSidecar()
	runErr := make(chan error, 1)
	go func() { runErr <- sc.Run(runCtx) }()

	var produced atomic.Int64
	produceErr := make(chan error, 1)
	go func() {
		produceErr <- produce(ctx, cfg.Source.Kafka.Brokers, o.Messages, o.DuplicateRate, o.Rate, &produced)
	}()

	// Wait until every produced record was acknowledged (delivered or deduplicated).
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	m := sc.Metrics
	progress := func() {
		fmt.Fprintf(o.Out, "%5.1fs  produced %5d  received %5.0f  delivered %5d/%d  pushes %5.0f  retried %4.0f  deduplicated %4.0f  acked %5.0f\n",
			time.Since(start).Seconds(), produced.Load(), metrics.CounterSum(m.Received), app.delivered(), o.Messages,
			metrics.CounterSum(m.Deliveries), metrics.CounterSum(m.Retried), metrics.CounterSum(m.Deduplicated), metrics.CounterSum(m.Acked))
	}
	var timedOut bool
	producing := true
wait:
	for producing || int64(metrics.CounterSum(m.Acked)) < produced.Load() {
		select {
		case err := <-produceErr:
			if err != nil {
				stopSidecar()
				<-runErr
				return fmt.Errorf("demo: produce: %w", err)
			}
			producing = false
		case <-tick.C:
			progress()
		case err := <-runErr:
			return fmt.Errorf("demo: sidecar stopped early: %w", err)
		case <-ctx.Done():
			timedOut = true
			break wait
		case <-time.After(20 * time.Millisecond):
		}
	}
	progress()
	stopSidecar()
	if err := <-runErr; err != nil {
		return fmt.Errorf("demo: sidecar: %w", err)
	}

	s := app.summary()
	lost := o.Messages - s.delivered
	fmt.Fprintf(o.Out, "\nsummary after %.1fs\n", time.Since(start).Seconds())
	fmt.Fprintf(o.Out, "  produced            %6d records (%d unique IDs, %d producer duplicates)\n", produced.Load(), o.Messages, produced.Load()-int64(o.Messages))
	fmt.Fprintf(o.Out, "  delivered           %6d unique IDs answered 2xx\n", s.delivered)
	fmt.Fprintf(o.Out, "  pushes              %6.0f (%0.f retried after a failure)\n", metrics.CounterSum(m.Deliveries), metrics.CounterSum(m.Retried))
	fmt.Fprintf(o.Out, "  deduplicated        %6.0f records acknowledged without a push\n", metrics.CounterSum(m.Deduplicated))
	fmt.Fprintf(o.Out, "  silent duplicates   %6d (a completed ID pushed again without ce-redelivered)\n", s.silentDups)
	fmt.Fprintf(o.Out, "  lost                %6d\n", lost)
	switch {
	case timedOut:
		return fmt.Errorf("demo: did not finish within %s", o.Timeout)
	case lost != 0 || s.silentDups != 0:
		return errors.New("demo: guarantees violated (see summary)")
	}
	fmt.Fprintln(o.Out, "\nevery message delivered once to the app; duplicates were filtered by ID; nothing lost.")
	return nil
}

// produce sends n unique messages with a message-id header at rate per second; a share is
// sent a second time a little later, as a producer retrying after a lost acknowledgement
// would. count is updated as records are confirmed.
func produce(ctx context.Context, brokers []string, n int, dupRate float64, rate int, count *atomic.Int64) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		return err
	}
	defer cl.Close()
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	send := func(id int) {
		key := "customer-" + strconv.Itoa(id%97)
		r := &kgo.Record{
			Key:     []byte(key),
			Value:   fmt.Appendf(nil, `{"order":%d,"customer":%q}`, id, key),
			Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte("order-" + strconv.Itoa(id))}, {Key: "content-type", Value: []byte("application/json")}},
		}
		wg.Add(1)
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			defer wg.Done()
			if err == nil {
				count.Add(1)
			} else {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		})
	}
	var retries []int
	begin := time.Now()
	for i := 0; i < n; i++ {
		if rate > 0 {
			if d := time.Until(begin.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		send(i)
		if rand.Float64() < dupRate {
			retries = append(retries, i)
		}
		if len(retries) > 0 && i%50 == 49 { // the "retry" lands a little later
			for _, id := range retries {
				send(id)
			}
			retries = retries[:0]
		}
	}
	for _, id := range retries {
		send(id)
	}
	wg.Wait()
	return first
}

// app is the demo application: it fails the first attempt of a share of messages and
// records what it saw, so the summary can prove nothing was lost or silently duplicated.
type app struct {
	failRate float64
	mu       sync.Mutex
	seen     map[string]*seen
	ok       atomic.Int64
}

type seen struct {
	attempts   int
	successes  int
	silentDups int
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	id := r.Header.Get("ce-id")
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.seen[id]
	if s == nil {
		s = &seen{}
		a.seen[id] = s
	}
	s.attempts++
	if s.attempts == 1 && fails(id, a.failRate) {
		if len(id)%2 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		} else {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		return
	}
	if s.successes > 0 && r.Header.Get("ce-redelivered") != "true" {
		s.silentDups++
	}
	s.successes++
	if s.successes == 1 {
		a.ok.Add(1)
	}
	w.WriteHeader(http.StatusOK)
}

// fails decides deterministically per ID, so a run is reproducible in shape.
func fails(id string, rate float64) bool {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return float64(h.Sum32()%10000)/10000 < rate
}

func (a *app) delivered() int { return int(a.ok.Load()) }

type summary struct{ delivered, silentDups int }

func (a *app) summary() summary {
	a.mu.Lock()
	defer a.mu.Unlock()
	var s summary
	for _, v := range a.seen {
		if v.successes > 0 {
			s.delivered++
		}
		s.silentDups += v.silentDups
	}
	return s
}
