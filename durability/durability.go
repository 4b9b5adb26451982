// Package durability audits the broker behind a sidecar (issue 15): whether what the broker
// acknowledged survives a broker's crash — replication and min.insync.replicas (Kafka),
// queue durability and type (RabbitMQ), flushing and replication (RocketMQ) — and whether
// the sidecar's own dead-letter producer asks for the broker's full acknowledgement.
//
// The checks themselves live with their broker (adapters/<broker>/durability.go) and take
// plain parameters; this package derives those parameters from a validated configuration
// (Check), renders a Report (`mqsidecar doctor`: a table or JSON, and its exit status), and
// runs the checks in the background of a running sidecar (Runner: one log line per verdict
// change, the mqsidecar_broker_durability gauge, the /readyz details).
//
// Verdicts are never guessed: a value the sidecar cannot read (no management API, no
// permission) is "unknown", and unknown is not ok — exit status 3, like a risk.
package durability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/kafka"
	"github.com/mqsidecar/mqsidecar/adapters/rabbitmq"
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
	"github.com/mqsidecar/mqsidecar/config"
)

// Exit statuses of `mqsidecar doctor` (ExitCode); 2 (bad configuration) is the CLI's.
const (
	ExitOK          = 0
	ExitUnreachable = 1
	ExitAtRisk      = 3
)

// Timeout bounds one whole check (connecting included) unless the caller's context is
// shorter: `mqsidecar doctor` answers within it even when a broker never answers.
const Timeout = 20 * time.Second

// ErrUnreachable is wrapped by Check's error when a broker could not be reached.
var ErrUnreachable = errors.New("could not connect")

// ErrConfig is wrapped by Check's error when the configuration cannot be used (a TLS file
// that does not load).
var ErrConfig = errors.New("configuration")

// Report is the result of one check of every target the configuration names.
type Report struct {
	Kind   string                     `json:"kind"`
	Checks []adapters.DurabilityCheck `json:"checks"`
}

// Verdict is the report's overall verdict: at risk when any check is, else unknown when
// any check is, else ok.
func (r Report) Verdict() adapters.Verdict {
	v := adapters.VerdictOK
	for _, c := range r.Checks {
		switch c.Verdict {
		case adapters.VerdictAtRisk:
			return adapters.VerdictAtRisk
		case adapters.VerdictUnknown:
			v = adapters.VerdictUnknown
		}
	}
	return v
}

// ExitCode is doctor's exit status for the report: ExitOK when every check is ok,
// ExitAtRisk otherwise (at risk, or unknown: not verified).
func (r Report) ExitCode() int {
	if r.Verdict() == adapters.VerdictOK {
		return ExitOK
	}
	return ExitAtRisk
}

// counts returns how many checks have each verdict.
func (r Report) counts() (ok, risk, unknown int) {
	for _, c := range r.Checks {
		switch c.Verdict {
		case adapters.VerdictOK:
			ok++
		case adapters.VerdictAtRisk:
			risk++
		default:
			unknown++
		}
	}
	return ok, risk, unknown
}

// Summary is one line: the verdict and its counts.
func (r Report) Summary() string {
	ok, risk, unknown := r.counts()
	return fmt.Sprintf("%s: %s (%d ok, %d at risk, %d unknown)", r.Kind, r.Verdict(), ok, risk, unknown)
}

// WriteTable prints the report as a table — check, target, value, source, verdict, fix —
// and the summary line.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tTARGET\tVALUE\tSOURCE\tVERDICT\tFIX")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Check, c.Target, dash(c.Value), dash(c.Source), strings.ToUpper(string(c.Verdict)), dash(c.Fix))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s\n", r.Summary())
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// jsonReport is the --output json form.
type jsonReport struct {
	Kind    string                     `json:"kind"`
	Verdict adapters.Verdict           `json:"verdict"`
	Exit    int                        `json:"exit_code"`
	Error   string                     `json:"error,omitempty"`
	Checks  []adapters.DurabilityCheck `json:"checks"`
}

// WriteJSON prints the report as one JSON object: kind, verdict, exit_code, checks.
func (r Report) WriteJSON(w io.Writer) error {
	checks := r.Checks
	if checks == nil {
		checks = []adapters.DurabilityCheck{}
	}
	return encode(w, jsonReport{Kind: r.Kind, Verdict: r.Verdict(), Exit: r.ExitCode(), Checks: checks})
}

// WriteJSONError prints a failed check (could not connect) as JSON, for pipelines.
func WriteJSONError(w io.Writer, kind string, err error, code int) error {
	return encode(w, jsonReport{Kind: kind, Verdict: adapters.VerdictUnknown, Exit: code, Error: err.Error(), Checks: []adapters.DurabilityCheck{}})
}

// encode writes v as one line of JSON, with <, > and & as they are (fixes quote commands).
func encode(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// Check runs the checks of cfg's source against its broker, bounded by Timeout or ctx's
// deadline if sooner: when the broker has not answered by then, Check returns at once
// (the check's connections are dropped in the background). The error wraps ErrUnreachable
// when the broker could not be reached, ErrConfig when cfg cannot be used.
func Check(ctx context.Context, cfg config.Config) (Report, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	rep := Report{Kind: cfg.Source.Kind}
	run, where, err := checker(cfg)
	if err != nil {
		return rep, err
	}
	type result struct {
		checks []adapters.DurabilityCheck
		err    error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		checks, err := run(ctx)
		done <- result{checks, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return rep, r.err
		}
		rep.Checks = r.checks
		return rep, nil
	case <-ctx.Done():
		return rep, fmt.Errorf("%w: %s: no answer within %s (%w)", ErrUnreachable, where, time.Since(start).Round(100*time.Millisecond), ctx.Err())
	}
}

// checker returns the check of cfg's source kind, and the addresses it contacts (for
// errors; no credentials).
func checker(cfg config.Config) (func(context.Context) ([]adapters.DurabilityCheck, error), string, error) {
	dl := cfg.Delivery.DeadLetter.Target
	switch cfg.Source.Kind {
	case "kafka":
		k := cfg.Source.Kafka
		tlsCfg, err := k.TLS.ClientConfig()
		if err != nil {
			return nil, "", fmt.Errorf("%w: source.kafka.%w", ErrConfig, err)
		}
		p := kafka.DurabilityParams{
			Brokers: k.Brokers, ClientID: k.ClientID, SASLMechanism: k.SASL.Mechanism, SASLUser: k.SASL.Username,
			SASLPassword: k.SASL.Password.Reveal(), TLS: tlsCfg, Topics: k.Topics, DeadLetterTopic: dl,
		}
		return func(ctx context.Context) ([]adapters.DurabilityCheck, error) {
			checks, err := kafka.CheckDurability(ctx, p)
			return checks, unreachable(err, kafka.ErrUnreachable)
		}, "kafka brokers " + strings.Join(k.Brokers, ","), nil
	case "rabbitmq":
		r := cfg.Source.RabbitMQ
		tlsCfg, err := r.TLS.ClientConfig()
		if err != nil {
			return nil, "", fmt.Errorf("%w: source.rabbitmq.%w", ErrConfig, err)
		}
		p := rabbitmq.DurabilityParams{
			URL: r.URL.Reveal(), TLS: tlsCfg, Queue: r.Queue, DeadLetterMode: r.DeadLetterMode, DeadLetterTarget: dl,
			ManagementURL: r.ManagementURL, ManagementUser: r.ManagementUsername, ManagementPassword: r.ManagementPassword.Reveal(),
		}
		where := "rabbitmq"
		if uri, err := amqp.ParseURI(p.URL); err == nil {
			where = "rabbitmq " + net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
			if p.ManagementUser == "" {
				p.ManagementUser = uri.Username
			}
			if p.ManagementPassword == "" {
				p.ManagementPassword = uri.Password
			}
			if tlsCfg != nil && tlsCfg.ServerName == "" {
				tlsCfg.ServerName = uri.Host
			}
		}
		return func(ctx context.Context) ([]adapters.DurabilityCheck, error) {
			checks, err := rabbitmq.CheckDurability(ctx, p)
			return checks, unreachable(err, rabbitmq.ErrUnreachable)
		}, where, nil
	case "rocketmq":
		r := cfg.Source.RocketMQ
		topics := []string{r.Topic}
		if r.DeadLetterMode == "topic" && dl != "" && dl != r.Topic {
			topics = append(topics, dl)
		}
		if r.Namespace != "" {
			for i, t := range topics {
				topics[i] = r.Namespace + "%" + t
			}
		}
		p := rocketmq.DurabilityParams{Nameservers: r.Nameservers, Topics: topics, AccessKey: r.AccessKey, SecretKey: r.SecretKey.Reveal()}
		return func(ctx context.Context) ([]adapters.DurabilityCheck, error) {
			checks, err := rocketmq.CheckDurability(ctx, p)
			return checks, unreachable(err, rocketmq.ErrUnreachable)
		}, "rocketmq name servers " + strings.Join(r.Nameservers, ","), nil
	}
	return nil, "", fmt.Errorf("%w: source.kind %q has no durability checks", ErrConfig, cfg.Source.Kind)
}

// unreachable wraps err with ErrUnreachable when it is the adapter's unreachable error or
// the time ran out.
func unreachable(err, adapterErr error) error {
	var ne net.Error
	if err == nil || errors.Is(err, ErrUnreachable) {
		return err
	}
	if errors.Is(err, adapterErr) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%w: %w", ErrUnreachable, ue.Err)
	}
	return err
}
