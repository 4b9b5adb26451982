package rocketmq

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// reqGetBrokerConfig is the broker's GET_BROKER_CONFIG request: the answer's body is the
// broker's whole configuration as Java properties text (key=value lines), defaults included.
const reqGetBrokerConfig = 26

// DurabilityParams is what CheckDurability needs: the name servers, the topics as the
// brokers know them (namespace%topic when a namespace is set) and the ACL credentials.
type DurabilityParams struct {
	Nameservers []string
	// Topics are the source topic and, in dead-letter mode "topic", the dead-letter topic.
	Topics               []string
	AccessKey, SecretKey string
	// Timeout bounds each request (dial, send, answer); 0 means 3 s.
	Timeout time.Duration
}

// ErrUnreachable marks a durability check that could not reach a name server or broker.
var ErrUnreachable = errors.New("rocketmq: unreachable")

// CheckDurability reads, from every master broker serving one of p.Topics, its
// flushDiskType and how it replicates (brokerRole, or DLedger, or controller mode with its
// in-sync replica settings), and returns two checks per broker, targeted at the broker name:
//
//   - flush_disk_type: SYNC_FLUSH is ok; ASYNC_FLUSH acknowledges a message still in the
//     page cache, so it is at risk unless the broker replicates synchronously (then the
//     replica holds it);
//   - replication: SYNC_MASTER, DLedger (Raft majority) or controller mode with
//     minInSyncReplicas ≥ 2 are ok; ASYNC_MASTER is at risk unless the broker flushes
//     synchronously.
//
// A topic without a route gives an unknown check; an unreachable name server or broker is
// an error wrapping ErrUnreachable.
func CheckDurability(ctx context.Context, p DurabilityParams) ([]adapters.DurabilityCheck, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = remotingTimeout
	}
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(d), time.Millisecond))
	}
	creds := primitive.Credentials{AccessKey: p.AccessKey, SecretKey: p.SecretKey}
	var out []adapters.DurabilityCheck
	brokers := map[string]string{} // broker name → master address
	for _, topic := range p.Topics {
		body, err := route(p.Nameservers, topic, timeout)
		switch {
		case errors.Is(err, ErrTopicNotExist):
			out = append(out, adapters.DurabilityCheck{
				Check: "topic_route", Target: topic, Source: "name server", Verdict: adapters.VerdictUnknown,
				Fix: fmt.Sprintf("create the topic: mqadmin updateTopic -n %s -c <cluster> -t %s", strings.Join(p.Nameservers, ";"), topic),
			})
			continue
		case err != nil:
			return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		for name, addr := range masterAddrByName(body) {
			brokers[name] = addr
		}
	}
	names := make([]string, 0, len(brokers))
	for n := range brokers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		addr := brokers[name]
		r, err := invoke(addr, reqGetBrokerConfig, nil, nil, creds, timeout)
		if err != nil {
			return nil, fmt.Errorf("%w: broker %s (%s): %w", ErrUnreachable, name, addr, err)
		}
		if r.Code != resSuccess {
			why := fmt.Sprintf("the broker refused GET_BROKER_CONFIG: code %d: %s", r.Code, r.Remark)
			for _, c := range []string{"flush_disk_type", "replication"} {
				out = append(out, adapters.DurabilityCheck{
					Check: c, Target: name, Source: "broker " + addr, Verdict: adapters.VerdictUnknown,
					Fix: why + " (an ACL must allow it for the sidecar's access key)",
				})
			}
			continue
		}
		out = append(out, brokerChecks(name, addr, parseProperties(r.body))...)
	}
	return out, nil
}

// brokerChecks judges one broker's configuration (see CheckDurability).
func brokerChecks(name, addr string, props map[string]string) []adapters.DurabilityCheck {
	src := "broker config (" + addr + ")"
	flush := props["flushDiskType"]
	syncFlush := flush == "SYNC_FLUSH"
	role := props["brokerRole"]
	var repl string
	var syncRepl bool
	switch {
	case props["enableDLegerCommitLog"] == "true":
		repl, syncRepl = "DLedger (Raft majority)", true
	case props["enableControllerMode"] == "true":
		n, _ := strconv.Atoi(props["minInSyncReplicas"])
		repl = fmt.Sprintf("controller mode, minInSyncReplicas=%s, allAckInSyncStateSet=%s", props["minInSyncReplicas"], props["allAckInSyncStateSet"])
		syncRepl = n >= 2
	default:
		repl, syncRepl = role, role == "SYNC_MASTER"
	}
	fc := adapters.DurabilityCheck{Check: "flush_disk_type", Target: name, Value: flush, Source: src, Verdict: adapters.VerdictOK}
	rc := adapters.DurabilityCheck{Check: "replication", Target: name, Value: repl, Source: src, Verdict: adapters.VerdictOK}
	if flush == "" {
		fc.Verdict, fc.Fix = adapters.VerdictUnknown, "the broker's configuration has no flushDiskType"
	}
	if !syncFlush && !syncRepl {
		fc.Verdict = adapters.VerdictAtRisk
		fc.Fix = "set flushDiskType=SYNC_FLUSH in the broker's broker.conf and restart it (or replicate synchronously, see replication)"
		rc.Verdict = adapters.VerdictAtRisk
		rc.Fix = "set brokerRole=SYNC_MASTER with a slave (or DLedger, or controller mode with minInSyncReplicas=2), " +
			"or flushDiskType=SYNC_FLUSH"
		if props["enableControllerMode"] == "true" {
			rc.Fix = "set minInSyncReplicas=2 and allAckInSyncStateSet=true in broker.conf, or flushDiskType=SYNC_FLUSH"
		}
	}
	return []adapters.DurabilityCheck{fc, rc}
}

// parseProperties reads Java properties text as the broker writes it (key=value lines, no
// continuations or escapes in the values it sends).
func parseProperties(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 64<<10), maxRemotingFrameLen)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '!' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}
