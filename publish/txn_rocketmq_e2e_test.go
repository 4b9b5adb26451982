//go:build e2e

package publish

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/admin"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
)

func rocketmqEnv(t *testing.T) (ns, broker string) {
	ns, broker = os.Getenv("MQSIDECAR_E2E_ROCKETMQ"), os.Getenv("MQSIDECAR_E2E_ROCKETMQ_BROKER")
	if ns == "" || broker == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_ROCKETMQ(_BROKER) not set, but CI=true")
		}
		t.Skip("MQSIDECAR_E2E_ROCKETMQ not set (e2e/harness/all.sh start; eval \"$(e2e/harness/all.sh env)\")")
	}
	return ns, broker
}

// plainRocketMQ is a synchronous RocketMQ producer counting only SEND_OK, for the commits
// whose half message no process holds (the sidecar's own is the publish endpoint's).
type plainRocketMQ struct{ p rmq.Producer }

func (p plainRocketMQ) Publish(ctx context.Context, m adapters.OutMessage) (adapters.Receipt, error) {
	msg := primitive.NewMessage(m.Topic, m.Payload)
	msg.WithProperty(primitive.PropertyUniqueClientMessageIdKeyIndex, m.ID)
	res, err := p.p.SendSync(ctx, msg)
	if err != nil {
		return adapters.Receipt{}, fmt.Errorf("%w: %v", adapters.ErrUnavailable, err)
	}
	if res.Status != primitive.SendOK {
		return adapters.Receipt{}, fmt.Errorf("%w: status %d", adapters.ErrOutcomeUnknown, res.Status)
	}
	return adapters.Receipt{Broker: "rocketmq", Topic: m.Topic, ID: m.ID, BrokerMessageID: res.OffsetMsgID, Durability: []string{"SEND_OK"}}, nil
}
func (plainRocketMQ) Run(ctx context.Context) error   { <-ctx.Done(); return nil }
func (plainRocketMQ) Close(ctx context.Context) error { return nil }

// rocketmqHalf sets up the child's RocketMQ side: the transactional producer (its group
// from the parent, the same across the restart) and a plain producer.
func rocketmqHalf(t *testing.T, o *TxnOptions) *rocketmq.Txn {
	ns, _ := rocketmqEnv(t)
	group := os.Getenv("MQSIDECAR_TXN_GROUP")
	half, err := rocketmq.NewTxn(rocketmq.TxnOptions{Nameservers: []string{ns}, Group: group})
	if err != nil {
		t.Fatal(err)
	}
	p, err := rmq.NewProducer(producer.WithNsResolver(primitive.NewPassthroughResolver([]string{ns})),
		producer.WithGroupName(group+"-plain"), producer.WithRetry(2))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	o.Half, o.Publisher, o.OrphanGrace = half, plainRocketMQ{p}, 20*time.Second
	return half
}

// TestTxnRocketMQKill9 runs the transaction scenario on the real RocketMQ with half
// messages: the kill -9 leaves half messages no process holds, which the broker's
// check-back settles after the restart (asking the app through the outbox).
func TestTxnRocketMQKill9(t *testing.T) {
	ns, broker := rocketmqEnv(t)
	topic := fmt.Sprintf("txn-e2e-%d", time.Now().UnixNano())
	adm, err := admin.NewAdmin(admin.WithResolver(primitive.NewPassthroughResolver([]string{ns})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := adm.CreateTopic(ctx, admin.WithTopicCreate(topic), admin.WithBrokerAddrCreate(broker),
		admin.WithReadQueueNums(1), admin.WithWriteQueueNums(1)); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	for {
		if mqs, err := adm.FetchPublishMessageQueues(ctx, topic); err == nil && len(mqs) > 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("topic %s has no route", topic)
		}
		time.Sleep(200 * time.Millisecond)
	}
	got := newSeen()
	c, err := rmq.NewPushConsumer(consumer.WithNsResolver(primitive.NewPassthroughResolver([]string{ns})),
		consumer.WithGroupName(topic+"-consumer"), consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(topic, consumer.MessageSelector{}, func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		for _, m := range msgs {
			got.add(m.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex))
		}
		return consumer.ConsumeSuccess, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	txnScenario(t, topic, got, "MQSIDECAR_TXN_BROKER=rocketmq", "MQSIDECAR_TXN_GROUP="+topic+"-txn")
}
