package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// producerOpts are the producer settings of the adapter's client (New), which writes dead
// letters: acks from every in-sync replica, idempotent writes (franz-go's defaults, stated
// so that the durability check reads them from the same options; see CheckDurability).
var producerOpts = []kgo.Opt{kgo.RequiredAcks(kgo.AllISRAcks())}

// saslMechanism returns the SASL mechanism named by mechanism ("" = none).
func saslMechanism(mechanism, user, pass string) (sasl.Mechanism, error) {
	switch strings.ToUpper(mechanism) {
	case "":
		return nil, nil
	case "PLAIN":
		return plain.Auth{User: user, Pass: pass}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("kafka: unsupported sasl mechanism %q", mechanism)
}

// DurabilityParams is what CheckDurability needs: how to connect (as the sidecar does) and
// which topics to check.
type DurabilityParams struct {
	Brokers  []string
	ClientID string
	// SASLMechanism is "", PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	SASLMechanism, SASLUser, SASLPassword string
	TLS                                   *tls.Config
	// Topics are the topics consumed; DeadLetterTopic ("" = none) is where the sidecar
	// produces dead letters, so it also gets the producer checks.
	Topics          []string
	DeadLetterTopic string
	// ClientOptions are appended to the client's options (tests).
	ClientOptions []kgo.Opt
}

// ErrUnreachable marks a durability check that could not reach the cluster.
var ErrUnreachable = errors.New("kafka: unreachable")

// CheckDurability reads, with kadm, each topic's replica assignment and configuration and
// returns, per topic: replication_factor (≥ 3), min_insync_replicas (≥ 2 and < RF),
// unclean_leader_election (false), under_min_isr (no partition has fewer in-sync replicas
// than min.insync.replicas now); and for the dead-letter topic the sidecar's own producer
// settings, producer_acks (all) and producer_idempotence (enabled). A missing topic gives an
// unknown "topic" check. An unreachable cluster is an error wrapping ErrUnreachable; ctx
// bounds the whole check.
func CheckDurability(ctx context.Context, p DurabilityParams) ([]adapters.DurabilityCheck, error) {
	mech, err := saslMechanism(p.SASLMechanism, p.SASLUser, p.SASLPassword)
	if err != nil {
		return nil, err
	}
	opts := []kgo.Opt{kgo.SeedBrokers(p.Brokers...), kgo.ClientID(p.ClientID), kgo.DialTimeout(5 * time.Second)}
	if p.ClientID == "" {
		opts[1] = kgo.ClientID("mqsidecar")
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	if p.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(p.TLS))
	}
	opts = append(append(opts, producerOpts...), p.ClientOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: create client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	topics := slices.Clone(p.Topics)
	if p.DeadLetterTopic != "" && !slices.Contains(topics, p.DeadLetterTopic) {
		topics = append(topics, p.DeadLetterTopic)
	}
	details, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("%w: brokers %s: %w", ErrUnreachable, strings.Join(p.Brokers, ","), err)
	}
	var existing []string
	for _, t := range topics {
		if d, ok := details[t]; ok && d.Err == nil {
			existing = append(existing, t)
		}
	}
	configs := map[string]map[string]kadm.Config{}
	configErrs := map[string]error{}
	if len(existing) > 0 {
		rcs, err := adm.DescribeTopicConfigs(ctx, existing...)
		if err != nil && len(rcs) == 0 {
			return nil, fmt.Errorf("%w: describe configs: %w", ErrUnreachable, err)
		}
		for _, rc := range rcs {
			if rc.Err != nil {
				configErrs[rc.Name] = rc.Err
				continue
			}
			m := map[string]kadm.Config{}
			for _, c := range rc.Configs {
				m[c.Key] = c
			}
			configs[rc.Name] = m
		}
	}
	bootstrap := p.Brokers[0]
	var out []adapters.DurabilityCheck
	for _, t := range topics {
		d, ok := details[t]
		if !ok || d.Err != nil {
			why := "topic does not exist"
			if ok && !errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
				why = d.Err.Error()
			}
			out = append(out, adapters.DurabilityCheck{
				Check: "topic", Target: t, Value: why, Source: "metadata", Verdict: adapters.VerdictUnknown,
				Fix: fmt.Sprintf("kafka-topics.sh --bootstrap-server %s --create --topic %s --replication-factor 3 --config min.insync.replicas=2", bootstrap, t),
			})
			continue
		}
		out = append(out, topicChecks(bootstrap, t, d, configs[t], configErrs[t])...)
		if t == p.DeadLetterTopic {
			out = append(out, producerChecks(cl, t)...)
		}
	}
	return out, nil
}

// topicChecks judges one topic (see CheckDurability).
func topicChecks(bootstrap, topic string, d kadm.TopicDetail, cfg map[string]kadm.Config, cfgErr error) []adapters.DurabilityCheck {
	notReadable := "allow DescribeConfigs on the topic for the sidecar's principal"
	if cfgErr != nil {
		notReadable = "the broker did not describe the topic's configuration: " + cfgErr.Error()
	}
	alter := func(kv string) string {
		return fmt.Sprintf("kafka-configs.sh --bootstrap-server %s --alter --entity-type topics --entity-name %s --add-config %s", bootstrap, topic, kv)
	}
	rf := -1
	for _, pd := range d.Partitions {
		if rf < 0 || len(pd.Replicas) < rf {
			rf = len(pd.Replicas)
		}
	}
	rfc := adapters.DurabilityCheck{Check: "replication_factor", Target: topic, Value: strconv.Itoa(rf), Source: "topic (replica assignment)", Verdict: adapters.VerdictOK}
	if rf < 3 {
		rfc.Verdict = adapters.VerdictAtRisk
		rfc.Fix = fmt.Sprintf("raise the replication factor to 3: kafka-reassign-partitions.sh --bootstrap-server %s --execute "+
			"--reassignment-json-file <3 replicas per partition of %s> (one broker's loss loses acknowledged messages below 3)", bootstrap, topic)
	}
	out := []adapters.DurabilityCheck{rfc}

	minISR := -1
	mc := adapters.DurabilityCheck{Check: "min_insync_replicas", Target: topic, Verdict: adapters.VerdictUnknown}
	if c, ok := cfg["min.insync.replicas"]; ok && c.Value != nil {
		mc.Value, mc.Source = *c.Value, configSource(c.Source)
		minISR, _ = strconv.Atoi(*c.Value)
		switch {
		case minISR < 2:
			mc.Verdict = adapters.VerdictAtRisk
			mc.Fix = alter("min.insync.replicas=2") + " (with 1, acks=all is acknowledged by the leader alone)"
		case rf > 0 && minISR >= rf:
			mc.Verdict = adapters.VerdictAtRisk
			mc.Fix = fmt.Sprintf("%s (min.insync.replicas must stay below the replication factor %d, or one broker down stops every write)", alter("min.insync.replicas="+strconv.Itoa(rf-1)), rf)
		default:
			mc.Verdict = adapters.VerdictOK
		}
	} else {
		mc.Source = "not readable"
		mc.Fix = notReadable
	}
	out = append(out, mc)

	uc := adapters.DurabilityCheck{Check: "unclean_leader_election", Target: topic, Verdict: adapters.VerdictUnknown}
	if c, ok := cfg["unclean.leader.election.enable"]; ok && c.Value != nil {
		uc.Value, uc.Source = *c.Value, configSource(c.Source)
		if *c.Value == "false" {
			uc.Verdict = adapters.VerdictOK
		} else {
			uc.Verdict = adapters.VerdictAtRisk
			uc.Fix = alter("unclean.leader.election.enable=false") + " (an out-of-sync replica may become leader and drop acknowledged messages)"
		}
	} else {
		uc.Source = "not readable"
		uc.Fix = notReadable
	}
	out = append(out, uc)

	ui := adapters.DurabilityCheck{Check: "under_min_isr", Target: topic, Source: "metadata (in-sync replicas now)", Verdict: adapters.VerdictUnknown}
	if minISR > 0 {
		under := 0
		for _, pd := range d.Partitions {
			if len(pd.ISR) < minISR {
				under++
			}
		}
		ui.Value = fmt.Sprintf("%d of %d partitions", under, len(d.Partitions))
		ui.Verdict = adapters.VerdictOK
		if under > 0 {
			ui.Verdict = adapters.VerdictAtRisk
			ui.Fix = fmt.Sprintf("bring the out-of-sync replicas back (kafka-topics.sh --bootstrap-server %s --describe --under-min-isr-partitions --topic %s)", bootstrap, topic)
		}
	} else {
		ui.Fix = "needs min.insync.replicas (see min_insync_replicas)"
	}
	return append(out, ui)
}

// producerChecks reads the producer settings of cl, built with producerOpts as the
// adapter's client is.
func producerChecks(cl *kgo.Client, topic string) []adapters.DurabilityCheck {
	acks, _ := cl.OptValue(kgo.RequiredAcks).(kgo.Acks)
	ac := adapters.DurabilityCheck{Check: "producer_acks", Target: topic, Value: "all", Source: "sidecar (dead-letter producer)", Verdict: adapters.VerdictOK}
	switch acks {
	case kgo.AllISRAcks():
	case kgo.LeaderAck():
		ac.Value, ac.Verdict, ac.Fix = "1", adapters.VerdictAtRisk, "the adapter must produce with kgo.RequiredAcks(kgo.AllISRAcks()) (adapters/kafka producerOpts)"
	default:
		ac.Value, ac.Verdict, ac.Fix = "0", adapters.VerdictAtRisk, "the adapter must produce with kgo.RequiredAcks(kgo.AllISRAcks()) (adapters/kafka producerOpts)"
	}
	ic := adapters.DurabilityCheck{Check: "producer_idempotence", Target: topic, Value: "enabled", Source: "sidecar (dead-letter producer)", Verdict: adapters.VerdictOK}
	if off, _ := cl.OptValue(kgo.DisableIdempotentWrite).(bool); off {
		ic.Value, ic.Verdict, ic.Fix = "disabled", adapters.VerdictAtRisk, "the adapter must not set kgo.DisableIdempotentWrite (adapters/kafka producerOpts)"
	}
	return []adapters.DurabilityCheck{ac, ic}
}

// configSource names where a topic configuration value came from.
func configSource(s kmsg.ConfigSource) string {
	switch s {
	case kmsg.ConfigSourceDynamicTopicConfig:
		return "topic"
	case kmsg.ConfigSourceDynamicBrokerConfig:
		return "broker (dynamic)"
	case kmsg.ConfigSourceDynamicDefaultBrokerConfig:
		return "cluster default (dynamic)"
	case kmsg.ConfigSourceStaticBrokerConfig:
		return "broker default (server.properties)"
	case kmsg.ConfigSourceDefaultConfig:
		return "Kafka default"
	}
	return strings.ToLower(s.String())
}
