//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/admin"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// `mqsidecar doctor` (issue 15) against real brokers: each in its default shape, which is
// at risk (the harness's single Kafka broker, a classic queue, RocketMQ's ASYNC_FLUSH), and
// in a safe shape (a three-node Kafka cluster with RF 3 and min.insync.replicas 2, a quorum
// queue, a SYNC_FLUSH broker: e2e/harness/doctor/shapes.sh), with the exit status asserted;
// an unreachable broker exits 1 with the reason within --timeout; and `run` with
// durability.require refuses an at-risk broker with exit 3 and starts on a safe one, with
// the verdict in /readyz, the log and mqsidecar_broker_durability.

// doctorReport is `mqsidecar doctor --output json`.
type doctorReport struct {
	Kind    string                     `json:"kind"`
	Verdict string                     `json:"verdict"`
	Exit    int                        `json:"exit_code"`
	Error   string                     `json:"error"`
	Checks  []adapters.DurabilityCheck `json:"checks"`
}

// doctor writes yaml to a file and runs `mqsidecar doctor` on it with args; it returns the
// exit status, the JSON report and the table (printed to the test log, as the example
// report of the README was copied from it).
func doctor(t *testing.T, name, yaml string, args ...string) (int, doctorReport, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	js := runCLI(t, time.Minute, nil, append([]string{"doctor", "--config", path, "--output", "json"}, args...)...)
	var rep doctorReport
	// stdout holds the report, one line; a failure's reason follows on stderr.
	first, _, _ := strings.Cut(js.output, "\n")
	if err := json.Unmarshal([]byte(first), &rep); err != nil {
		t.Fatalf("doctor %s: exit %d, output is not one JSON report (%v):\n%s", name, js.code, err, js.output)
	}
	table := runCLI(t, time.Minute, nil, append([]string{"doctor", "--config", path}, args...)...)
	t.Logf("$ mqsidecar doctor --config %s.yaml   (exit %d, %s)\n%s", name, table.code, table.took.Round(time.Millisecond), table.output)
	if table.code != js.code || rep.Exit != js.code {
		t.Errorf("doctor %s: table exit %d, json exit %d, json exit_code %d", name, table.code, js.code, rep.Exit)
	}
	return js.code, rep, table.output
}

// want asserts one check's value and verdict (value "*" = any) and that a check not ok
// carries a fix.
func (r doctorReport) want(t *testing.T, check, target, value string, verdict adapters.Verdict) {
	t.Helper()
	for _, c := range r.Checks {
		if c.Check != check || c.Target != target {
			continue
		}
		if (value != "*" && c.Value != value) || c.Verdict != verdict {
			t.Errorf("%s %s: %q %s, want %q %s", check, target, c.Value, c.Verdict, value, verdict)
		}
		if c.Verdict != adapters.VerdictOK && c.Fix == "" {
			t.Errorf("%s %s is %s without a fix", check, target, c.Verdict)
		}
		return
	}
	t.Errorf("no %s check of %s in %+v", check, target, r.Checks)
}

// doctorYAMLTail ends every configuration of these tests: no store, no admin listener
// (`run` gets one from MQSIDECAR_ADMIN_LISTEN), an app that is never pushed to.
const doctorYAMLTail = `app:
  url: http://127.0.0.1:9/in
dedup:
  enabled: false
admin:
  listen: ""
`

func kafkaYAML(brokers []string, topic, dlq string, extra string) string {
	if dlq != "" {
		dlq = "delivery:\n  dead_letter:\n    target: " + dlq + "\n"
	}
	return fmt.Sprintf(`source:
  kind: kafka
  kafka:
    brokers: [%s]
    group: %s-g
    topics: [%s]
%s%s%s`, strings.Join(brokers, ", "), topic, topic, dlq, doctorYAMLTail, extra)
}

// kafkaTopics creates topics with rf replicas and configs on brokers.
func kafkaTopics(t *testing.T, brokers []string, rf int16, configs map[string]*string, topics ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adm := kadm.NewClient(cl)
	resp, err := adm.CreateTopics(ctx, 2, rf, configs, topics...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("create %v (RF %d): %v", topics, rf, err)
	}
	// A new topic reaches every broker's metadata cache a moment later; until then a broker
	// answers that it does not exist, and the doctor says unknown. Wait for every broker.
	meta, err := adm.BrokerMetadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range meta.Brokers {
		for {
			req := kmsg.NewPtrMetadataRequest()
			for _, tp := range topics {
				rt := kmsg.NewMetadataRequestTopic()
				rt.Topic = kmsg.StringPtr(tp)
				req.Topics = append(req.Topics, rt)
			}
			resp, err := req.RequestWith(ctx, cl.Broker(int(b.NodeID)))
			known := err == nil
			for _, rt := range respTopics(resp) {
				known = known && rt.ErrorCode == 0
			}
			if known {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("topics %v not in broker %d's metadata: %v", topics, b.NodeID, err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func respTopics(r *kmsg.MetadataResponse) []kmsg.MetadataResponseTopic {
	if r == nil {
		return nil
	}
	return r.Topics
}

func TestDoctorE2EKafkaDefault(t *testing.T) {
	brokers := strings.Split(brokerEnv(t, "MQSIDECAR_E2E_KAFKA", "kafka.sh"), ",")
	topic := uniqueName("e2e-doctor")
	kafkaTopics(t, brokers, 1, nil, topic, topic+"-dlq")
	code, rep, _ := doctor(t, "kafka-default", kafkaYAML(brokers, topic, topic+"-dlq", ""))
	if code != 3 || rep.Verdict != "at risk" {
		t.Errorf("exit %d (%s), want 3: one broker, RF 1, min.insync.replicas 1", code, rep.Verdict)
	}
	for _, tp := range []string{topic, topic + "-dlq"} {
		rep.want(t, "replication_factor", tp, "1", adapters.VerdictAtRisk)
		rep.want(t, "min_insync_replicas", tp, "1", adapters.VerdictAtRisk)
		rep.want(t, "unclean_leader_election", tp, "false", adapters.VerdictOK)
		rep.want(t, "under_min_isr", tp, "0 of 2 partitions", adapters.VerdictOK)
	}
	rep.want(t, "producer_acks", topic+"-dlq", "all", adapters.VerdictOK)
	rep.want(t, "producer_idempotence", topic+"-dlq", "enabled", adapters.VerdictOK)
}

func TestDoctorE2EKafkaCluster(t *testing.T) {
	brokers := strings.Split(brokerEnv(t, "MQSIDECAR_E2E_KAFKA_CLUSTER", "doctor/shapes.sh"), ",")
	topic := uniqueName("e2e-doctor-safe")
	kafkaTopics(t, brokers, 3, nil, topic, topic+"-dlq")
	code, rep, _ := doctor(t, "kafka-cluster", kafkaYAML(brokers, topic, topic+"-dlq", ""))
	if code != 0 || rep.Verdict != "ok" || len(rep.Checks) != 10 {
		t.Errorf("exit %d (%s, %d checks), want 0 and 10 checks: RF 3, min.insync.replicas 2 (broker default)", code, rep.Verdict, len(rep.Checks))
	}
	rep.want(t, "replication_factor", topic, "3", adapters.VerdictOK)
	rep.want(t, "min_insync_replicas", topic, "2", adapters.VerdictOK)
	rep.want(t, "under_min_isr", topic, "0 of 2 partitions", adapters.VerdictOK)

	// The same cluster, a topic that overrides the safe defaults: at risk, found on the topic.
	weak := uniqueName("e2e-doctor-weak")
	one, yes := "1", "true"
	kafkaTopics(t, brokers, 3, map[string]*string{"min.insync.replicas": &one, "unclean.leader.election.enable": &yes}, weak)
	code, rep, _ = doctor(t, "kafka-cluster-weak-topic", kafkaYAML(brokers, weak, topic+"-dlq", ""))
	if code != 3 {
		t.Errorf("topic with min.insync.replicas 1 and unclean election: exit %d, want 3", code)
	}
	rep.want(t, "replication_factor", weak, "3", adapters.VerdictOK)
	rep.want(t, "min_insync_replicas", weak, "1", adapters.VerdictAtRisk)
	rep.want(t, "unclean_leader_election", weak, "true", adapters.VerdictAtRisk)
	for _, c := range rep.Checks {
		if c.Target == weak && (c.Check == "min_insync_replicas" || c.Check == "unclean_leader_election") && c.Source != "topic" {
			t.Errorf("%s of %s: source %q, want topic", c.Check, weak, c.Source)
		}
	}
}

func rabbitYAML(url, queue, extra string) string {
	return fmt.Sprintf(`source:
  kind: rabbitmq
  rabbitmq:
    url: %s
    queue: %s
%s
%s`, url, queue, extra, doctorYAMLTail)
}

// rabbitDeclare declares a queue (with args) and, when exchange is not "", a durable
// direct exchange; both are deleted at the end of the test.
func rabbitDeclare(t *testing.T, url, queue string, args amqp.Table, exchange string) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(queue, false, false, false) })
	if exchange != "" {
		if err := ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
			t.Fatalf("declare exchange %s: %v", exchange, err)
		}
		t.Cleanup(func() { _ = ch.ExchangeDelete(exchange, false, false) })
	}
}

// rabbitMgmtEnv returns the AMQP URL and the management API of the RabbitMQ node with the
// management plugin (doctor/shapes.sh).
func rabbitMgmtEnv(t *testing.T) (string, string) {
	t.Helper()
	return brokerEnv(t, "MQSIDECAR_E2E_RABBITMQ_MGMT_AMQP", "doctor/shapes.sh"), brokerEnv(t, "MQSIDECAR_E2E_RABBITMQ_MGMT", "doctor/shapes.sh")
}

// The default shape: a durable classic queue, dead letters published to an exchange that
// does not exist. AMQP alone cannot tell the queue's durability or type: unknown.
func TestDoctorE2ERabbitMQClassic(t *testing.T) {
	url := brokerEnv(t, "MQSIDECAR_E2E_RABBITMQ", "rabbitmq.sh")
	queue := uniqueName("e2e-doctor-classic")
	rabbitDeclare(t, url, queue, nil, "")
	dl := "  dead_letter:\n    target: " + queue + "-missing-x\n"
	yaml := strings.Replace(rabbitYAML(url, queue, ""), "app:", "delivery:\n"+dl+"app:", 1)
	code, rep, _ := doctor(t, "rabbitmq-classic-amqp", yaml)
	if code != 3 {
		t.Errorf("exit %d, want 3", code)
	}
	rep.want(t, "queue_durable", queue, "", adapters.VerdictUnknown)
	rep.want(t, "queue_type", queue, "", adapters.VerdictUnknown)
	rep.want(t, "dead_letter_exchange", queue+"-missing-x", "does not exist", adapters.VerdictAtRisk)
	rep.want(t, "publisher_confirms", queue+"-missing-x", "*", adapters.VerdictOK)

	// The same shape on the node with the management API: durable, and classic is at risk.
	url, mgmt := rabbitMgmtEnv(t)
	rabbitDeclare(t, url, queue, nil, "")
	yaml = strings.Replace(rabbitYAML(url, queue, "    management_url: "+mgmt), "app:", "delivery:\n"+dl+"app:", 1)
	code, rep, _ = doctor(t, "rabbitmq-classic-mgmt", yaml)
	if code != 3 {
		t.Errorf("with the management API: exit %d, want 3", code)
	}
	rep.want(t, "queue_durable", queue, "true", adapters.VerdictOK)
	rep.want(t, "queue_type", queue, "classic", adapters.VerdictAtRisk)
}

// The safe shape: a quorum queue, read through the management API; dead letters published
// with confirms to an existing exchange, or dead-lettered by the broker at least once.
func TestDoctorE2ERabbitMQQuorum(t *testing.T) {
	url, mgmt := rabbitMgmtEnv(t)
	queue := uniqueName("e2e-doctor-quorum")
	rabbitDeclare(t, url, queue, amqp.Table{"x-queue-type": "quorum"}, queue+"-dlx")
	yaml := strings.Replace(rabbitYAML(url, queue, "    management_url: "+mgmt), "app:", "delivery:\n  dead_letter:\n    target: "+queue+"-dlx\napp:", 1)
	code, rep, _ := doctor(t, "rabbitmq-quorum", yaml)
	if code != 0 || len(rep.Checks) != 4 {
		t.Errorf("exit %d with %d checks, want 0 and 4", code, len(rep.Checks))
	}
	rep.want(t, "queue_durable", queue, "true", adapters.VerdictOK)
	rep.want(t, "queue_type", queue, "quorum", adapters.VerdictOK)
	rep.want(t, "dead_letter_exchange", queue+"-dlx", "exists", adapters.VerdictOK)

	// dead_letter_mode nack: the broker dead-letters; safe only at least once.
	nack := uniqueName("e2e-doctor-nack")
	rabbitDeclare(t, url, nack, amqp.Table{"x-queue-type": "quorum", "x-dead-letter-exchange": queue + "-dlx",
		"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}, "")
	code, rep, _ = doctor(t, "rabbitmq-quorum-nack", rabbitYAML(url, nack, "    dead_letter_mode: nack\n    management_url: "+mgmt))
	if code != 0 {
		t.Errorf("nack into an at-least-once quorum DLX: exit %d, want 0", code)
	}
	rep.want(t, "dead_letter_exchange", nack, queue+"-dlx", adapters.VerdictOK)
	rep.want(t, "dead_letter_strategy", nack, "at-least-once", adapters.VerdictOK)
	plain := uniqueName("e2e-doctor-nack-plain")
	rabbitDeclare(t, url, plain, amqp.Table{"x-queue-type": "quorum"}, "")
	code, rep, _ = doctor(t, "rabbitmq-quorum-nack-no-dlx", rabbitYAML(url, plain, "    dead_letter_mode: nack\n    management_url: "+mgmt))
	if code != 3 {
		t.Errorf("nack without a DLX: exit %d, want 3", code)
	}
	rep.want(t, "dead_letter_exchange", plain, "none", adapters.VerdictAtRisk)
	rep.want(t, "dead_letter_strategy", plain, "at-most-once", adapters.VerdictAtRisk)

	// Wrong management credentials: unknown with the reason, never a guess.
	code, rep, _ = doctor(t, "rabbitmq-quorum-bad-mgmt", rabbitYAML(url, queue, "    management_url: "+mgmt+"\n    management_password: wrong"))
	if code != 3 {
		t.Errorf("management API refusing the password: exit %d, want 3", code)
	}
	rep.want(t, "queue_type", queue, "", adapters.VerdictUnknown)
}

// rocketTopicAt creates topic on the broker and waits until the name server ns routes it.
func rocketTopicAt(t *testing.T, ns, broker, topic string) {
	t.Helper()
	adm, err := admin.NewAdmin(admin.WithResolver(primitive.NewPassthroughResolver([]string{ns})))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := adm.CreateTopic(ctx, admin.WithTopicCreate(topic), admin.WithBrokerAddrCreate(broker),
		admin.WithReadQueueNums(2), admin.WithWriteQueueNums(2)); err != nil {
		t.Fatalf("create topic %s on %s: %v", topic, broker, err)
	}
	for {
		if mqs, err := adm.FetchPublishMessageQueues(ctx, topic); err == nil && len(mqs) == 2 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s: no route at %s", topic, ns)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func rocketYAML(ns, topic string) string {
	return fmt.Sprintf(`source:
  kind: rocketmq
  rocketmq:
    nameservers: [%s]
    group: %s-g
    topic: %s
%s`, ns, topic, topic, doctorYAMLTail)
}

func TestDoctorE2ERocketMQ(t *testing.T) {
	for _, tc := range []struct {
		name, env, script, flush string
		code                     int
		verdict                  adapters.Verdict
	}{
		{"rocketmq-default", "MQSIDECAR_E2E_ROCKETMQ", "rocketmq.sh", "ASYNC_FLUSH", 3, adapters.VerdictAtRisk},
		{"rocketmq-sync-flush", "MQSIDECAR_E2E_ROCKETMQ_SYNC", "doctor/shapes.sh", "SYNC_FLUSH", 0, adapters.VerdictOK},
	} {
		t.Run(tc.flush, func(t *testing.T) {
			ns := brokerEnv(t, tc.env, tc.script)
			broker := brokerEnv(t, tc.env+"_BROKER", tc.script)
			topic := uniqueName("e2e-" + tc.name)
			rocketTopicAt(t, ns, broker, topic)
			code, rep, _ := doctor(t, tc.name, rocketYAML(ns, topic))
			if code != tc.code || len(rep.Checks) != 2 {
				t.Errorf("exit %d with %d checks, want %d and 2", code, len(rep.Checks), tc.code)
			}
			rep.want(t, "flush_disk_type", "broker-a", tc.flush, tc.verdict)
			// An asynchronous replica is at risk only when the broker flushes asynchronously.
			rep.want(t, "replication", "broker-a", "ASYNC_MASTER", tc.verdict)
		})
	}
}

// An unreachable broker — a refused port, or one that accepts and never answers — exits 1
// with the reason, within --timeout.
func TestDoctorE2EUnreachable(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	refused := freeAddr(t)
	for _, addr := range []string{refused, silent.Addr().String()} {
		for _, yaml := range []string{
			kafkaYAML([]string{addr}, "orders", "", ""),
			rabbitYAML("amqp://guest:secret-pw@"+addr+"/", "orders", ""),
			rocketYAML(addr, "orders"),
		} {
			code, rep, table := doctor(t, "unreachable", yaml, "--timeout", "2s")
			if code != 1 || rep.Exit != 1 || !strings.Contains(rep.Error, "could not connect") || !strings.Contains(rep.Error, addr) ||
				!strings.Contains(table, "could not connect") {
				t.Errorf("%s at %s: exit %d, error %q, want 1 naming the address", rep.Kind, addr, code, rep.Error)
			}
			if strings.Contains(table, "secret-pw") {
				t.Errorf("the reason shows the password: %s", table)
			}
		}
	}
}

// `run` with durability.require: an at-risk broker is refused with exit 3 before anything
// is consumed; a safe one starts, and /readyz, the log and the gauge carry the verdict.
// Without require, an at-risk broker starts and says so.
func TestDoctorE2ERequire(t *testing.T) {
	brokers := strings.Split(brokerEnv(t, "MQSIDECAR_E2E_KAFKA", "kafka.sh"), ",")
	topic := uniqueName("e2e-doctor-require")
	kafkaTopics(t, brokers, 1, nil, topic)
	withAdmin := func(y string) string { return strings.Replace(y, "admin:\n  listen: \"\"\n", "", 1) }

	refused := newSidecarConfig(t, "require-at-risk", withAdmin(kafkaYAML(brokers, topic, "", "durability:\n  require: true\n")))
	p := refused.startNoWait()
	code, ok := p.Wait(60 * time.Second)
	if !ok || code != 3 {
		t.Fatalf("durability.require on an at-risk broker: %s, want exit 3", p.exitString())
	}
	if log := p.logText(); !strings.Contains(log, "refusing to start") || !strings.Contains(log, "min_insync_replicas") || strings.Contains(log, `"msg":"consuming"`) {
		t.Errorf("log of the refused start:\n%s", p.logTail(20))
	}

	started := newSidecarConfig(t, "at-risk-runs", withAdmin(kafkaYAML(brokers, topic, "", "")))
	p = started.start()
	waitFor(t, 30*time.Second, "/readyz shows the risk", func() (bool, string) {
		_, body := p.readyz()
		return strings.Contains(body, "durability: at risk: replication_factor "+topic+"=1"), body
	})
	if v, err := p.metric(`mqsidecar_broker_durability{check="replication_factor",target="` + topic + `"}`); err != nil || v != 0 {
		t.Errorf("gauge of an at-risk check: %v, %v; want 0", v, err)
	}
	if v, err := p.metric(`mqsidecar_broker_durability{check="unclean_leader_election",target="` + topic + `"}`); err != nil || v != 1 {
		t.Errorf("gauge of an ok check: %v, %v; want 1", v, err)
	}
	if n := strings.Count(p.logText(), `"check":"replication_factor"`); n != 1 {
		t.Errorf("%d log lines for the replication_factor verdict, want 1", n)
	}
	p.Term(30 * time.Second)

	cluster := os.Getenv("MQSIDECAR_E2E_KAFKA_CLUSTER")
	if cluster == "" {
		brokerEnv(t, "MQSIDECAR_E2E_KAFKA_CLUSTER", "doctor/shapes.sh")
	}
	cb := strings.Split(cluster, ",")
	safe := uniqueName("e2e-doctor-require-safe")
	kafkaTopics(t, cb, 3, nil, safe)
	p = newSidecarConfig(t, "require-safe", withAdmin(kafkaYAML(cb, safe, "", "durability:\n  require: true\n"))).start()
	if _, body := p.readyz(); !strings.Contains(body, "durability: ok (4 checks)") {
		t.Errorf("/readyz on a safe cluster: %s", body)
	}
	if v, err := p.metric(`mqsidecar_broker_durability{check="min_insync_replicas",target="` + safe + `"}`); err != nil || v != 1 {
		t.Errorf("gauge on a safe cluster: %v, %v; want 1", v, err)
	}
	p.Term(30 * time.Second)
}
