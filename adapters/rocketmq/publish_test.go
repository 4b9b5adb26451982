package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rmqerrors "github.com/apache/rocketmq-client-go/v2/errors"
	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// fakeProducer answers SendSync with res/err and records what was sent.
type fakeProducer struct {
	res  *primitive.SendResult
	err  error
	sent []*primitive.Message
}

func (f *fakeProducer) Start() error    { return nil }
func (f *fakeProducer) Shutdown() error { return nil }
func (f *fakeProducer) SendSync(_ context.Context, msgs ...*primitive.Message) (*primitive.SendResult, error) {
	f.sent = append(f.sent, msgs...)
	return f.res, f.err
}

// startedPublisher is a publisher on f whose name servers route every topic but "missing".
func startedPublisher(t *testing.T, f *fakeProducer) (*Publisher, *int) {
	t.Helper()
	cfg := Defaults()
	cfg.Nameservers, cfg.Group, cfg.Topic = []string{"127.0.0.1:1"}, "g", "t"
	p := newPublisher(cfg, slog.New(slog.DiscardHandler), f)
	routes := 0
	p.route = func(topic string, _ time.Duration) error {
		routes++
		if topic == "missing" {
			return &routeError{msg: "no route", kind: ErrTopicNotExist, err: errors.New("code 17")}
		}
		if topic == "nsdown" {
			return &routeError{msg: "unreachable", kind: ErrNameServerUnreachable, err: errors.New("refused")}
		}
		return nil
	}
	p.brokers = func(time.Duration) (int, error) { return 1, nil }
	lifecycletest.Start(t, p.Run)
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		ok := p.started
		p.mu.Unlock()
		if ok {
			return p, &routes
		}
		if time.Now().After(deadline) {
			t.Fatal("not started")
		}
		time.Sleep(time.Millisecond)
	}
}

// Only SEND_OK is a success; the other statuses are ErrOutcomeUnknown naming the status.
func TestPublishSendStatus(t *testing.T) {
	for _, c := range []struct {
		st   primitive.SendStatus
		name string
	}{
		{primitive.SendFlushDiskTimeout, "FLUSH_DISK_TIMEOUT"},
		{primitive.SendFlushSlaveTimeout, "FLUSH_SLAVE_TIMEOUT"},
		{primitive.SendSlaveNotAvailable, "SLAVE_NOT_AVAILABLE"},
	} {
		f := &fakeProducer{res: &primitive.SendResult{Status: c.st, MessageQueue: &primitive.MessageQueue{QueueId: 1}}}
		p, _ := startedPublisher(t, f)
		_, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "id"})
		if !errors.Is(err, adapters.ErrOutcomeUnknown) || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s: %v, want ErrOutcomeUnknown naming the status", c.name, err)
		}
	}
	f := &fakeProducer{res: &primitive.SendResult{Status: primitive.SendOK, OffsetMsgID: "7F00000100002A9F", QueueOffset: 42,
		MessageQueue: &primitive.MessageQueue{Topic: "t", BrokerName: "b", QueueId: 3}}}
	p, _ := startedPublisher(t, f)
	r, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "id"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Broker != "rocketmq" || r.ID != "id" || r.Topic != "t" || r.BrokerMessageID != "7F00000100002A9F" ||
		r.Partition == nil || *r.Partition != 3 || r.Offset == nil || *r.Offset != 42 || !strings.Contains(fmt.Sprint(r.Durability), "SEND_OK") {
		t.Fatalf("receipt %+v", r)
	}
}

// A send error is classified: only a timeout (the request left) leaves the outcome unknown.
func TestClassifySend(t *testing.T) {
	for _, c := range []struct {
		err  error
		want error
	}{
		{rmqerrors.ErrRequestTimeout, adapters.ErrOutcomeUnknown},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), adapters.ErrOutcomeUnknown},
		{errors.New("CODE: 17, DESC: topic[t] not exist, apply first please!"), adapters.ErrUnknownTopic},
		{errors.New("CODE: 2, DESC: [REJECTREQUEST]system busy"), adapters.ErrUnavailable},
		{errors.New("CODE: 14, DESC: service not available now"), adapters.ErrUnavailable},
		{errors.New("CODE: 13, DESC: the message body size over max value"), adapters.ErrRejected},
		{errors.New("CODE: 16, DESC: no permission"), adapters.ErrRejected},
		{errors.New("dial tcp 127.0.0.1:10911: connect: connection refused"), adapters.ErrUnavailable},
		{errors.New("the topic=t route info not found"), adapters.ErrUnavailable},
	} {
		if got := classifySend(c.err); !errors.Is(got, c.want) {
			t.Errorf("%v: %v, want %v", c.err, got, c.want)
		}
	}
	f := &fakeProducer{err: rmqerrors.ErrRequestTimeout}
	p, _ := startedPublisher(t, f)
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "id"}); !errors.Is(err, adapters.ErrOutcomeUnknown) {
		t.Fatalf("Publish: %v", err)
	}
}

// The message carries the ID as UNIQ_KEY (the consumer side's default ID), the key as
// KEYS, the headers and the content type as properties.
func TestPublishMessage(t *testing.T) {
	f := &fakeProducer{res: &primitive.SendResult{Status: primitive.SendOK}}
	p, _ := startedPublisher(t, f)
	m := adapters.OutMessage{Topic: "t", ID: "order-1", Key: "cust-9", ContentType: "application/json", Payload: []byte("{}"),
		Headers: []adapters.Header{{Key: "ce-type", Value: "x"}, {Key: "Content-Type", Value: "text/plain"}, {Key: "empty", Value: ""}}}
	if _, err := p.Publish(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	msg := f.sent[0]
	if msg.Topic != "t" || string(msg.Body) != "{}" || msg.GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex) != "order-1" ||
		msg.GetKeys() != "cust-9" || msg.GetProperty("content-type") != "application/json" || msg.GetProperty("ce-type") != "x" ||
		msg.GetProperty("Content-Type") != "" {
		t.Fatalf("message %v", msg)
	}
	// What the consumer side reads back as the ID and content type.
	ext := &primitive.MessageExt{}
	ext.WithProperties(msg.GetProperties())
	if id := messageID("uniq_key", ext); id != "order-1" {
		t.Fatalf("consumer ID %q", id)
	}
	for name, bad := range map[string]adapters.OutMessage{
		"no id":           {Topic: "t"},
		"bad topic":       {Topic: "a b", ID: "i"},
		"system property": {Topic: "t", ID: "i", Headers: []adapters.Header{{Key: "DELAY", Value: "3"}}},
		"uniq key header": {Topic: "t", ID: "i", Headers: []adapters.Header{{Key: "UNIQ_KEY", Value: "other"}}},
		"separator":       {Topic: "t", ID: "i", Headers: []adapters.Header{{Key: "a", Value: "x\x01y"}}},
		"separator in id": {Topic: "t", ID: "i\x02"},
	} {
		n := len(f.sent)
		if _, err := p.Publish(context.Background(), bad); !errors.Is(err, adapters.ErrRejected) || len(f.sent) != n {
			t.Errorf("%s: %v (sent %d), want ErrRejected and nothing sent", name, err, len(f.sent)-n)
		}
	}
}

// An unknown topic is answered from the name servers' route, before a send; a routed
// topic is not asked again within routeTTL; a broker's TOPIC_NOT_EXIST forgets it.
func TestPublishTopicCheck(t *testing.T) {
	f := &fakeProducer{res: &primitive.SendResult{Status: primitive.SendOK}}
	p, routes := startedPublisher(t, f)
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "missing", ID: "i"}); !errors.Is(err, adapters.ErrUnknownTopic) || len(f.sent) != 0 {
		t.Fatalf("missing topic: %v, sent %d", err, len(f.sent))
	}
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "nsdown", ID: "i"}); !errors.Is(err, adapters.ErrUnavailable) || len(f.sent) != 0 {
		t.Fatalf("name servers down: %v, sent %d", err, len(f.sent))
	}
	*routes = 0
	for range 3 {
		if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "i"}); err != nil {
			t.Fatal(err)
		}
	}
	if *routes != 1 {
		t.Fatalf("%d route requests for 3 publishes", *routes)
	}
	// A failed check is answered again for routeRetry without asking: clients retrying fast
	// while a broker restarts must not flood the name servers.
	*routes = 0
	for range 3 {
		if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "nsdown", ID: "i"}); !errors.Is(err, adapters.ErrUnavailable) {
			t.Fatal(err)
		}
	}
	if *routes != 0 {
		t.Fatalf("%d route requests within routeRetry of a failed one", *routes)
	}
	p.mu.Lock()
	p.failed["nsdown"] = routeFailure{err: p.failed["nsdown"].err, at: time.Now().Add(-routeRetry)}
	p.mu.Unlock()
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "nsdown", ID: "i"}); !errors.Is(err, adapters.ErrUnavailable) || *routes != 1 {
		t.Fatalf("after routeRetry: %v, %d route requests", err, *routes)
	}
	f.err = errors.New("CODE: 17, DESC: topic[t] not exist")
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "i"}); !errors.Is(err, adapters.ErrUnknownTopic) {
		t.Fatal(err)
	}
	f.err = nil
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "i"}); err != nil || *routes != 2 {
		t.Fatalf("after TOPIC_NOT_EXIST: %v, %d route requests", err, *routes)
	}
}

// The name servers route no topic while no broker is registered (a broker restart), and no
// longer route a topic whose brokers are down: both are ErrUnavailable, not an unknown topic.
func TestPublishNoRouteWhileBrokerDown(t *testing.T) {
	f := &fakeProducer{res: &primitive.SendResult{Status: primitive.SendOK}}
	p, _ := startedPublisher(t, f)
	p.brokers = func(time.Duration) (int, error) { return 0, nil }
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "missing", ID: "i"}); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("no broker registered: %v, want ErrUnavailable", err)
	}
	p.brokers = func(time.Duration) (int, error) { return 0, errors.New("timeout") }
	p.failed = map[string]routeFailure{} // not the cached answer
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "missing", ID: "i"}); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("cluster info failed: %v, want ErrUnavailable", err)
	}
	p.brokers = func(time.Duration) (int, error) { return 1, nil }
	// "t" is routed once, then its route vanishes (its broker stopped and unregistered).
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "i"}); err != nil {
		t.Fatal(err)
	}
	p.forget("t")
	route := p.route
	p.route = func(topic string, d time.Duration) error { return route("missing", d) }
	if _, err := p.Publish(context.Background(), adapters.OutMessage{Topic: "t", ID: "i"}); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("route of a routed topic gone: %v, want ErrUnavailable", err)
	}
}

// Before Run started the producer, and after Close, Publish answers ErrUnavailable.
func TestPublishNotStarted(t *testing.T) {
	cfg := Defaults()
	cfg.Nameservers, cfg.Group, cfg.Topic = []string{"127.0.0.1:1"}, "g", "t"
	f := &fakeProducer{res: &primitive.SendResult{Status: primitive.SendOK}}
	p := newPublisher(cfg, slog.New(slog.DiscardHandler), f)
	m := adapters.OutMessage{Topic: "t", ID: "i"}
	if _, err := p.Publish(context.Background(), m); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("before Run: %v", err)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(context.Background(), m); !errors.Is(err, adapters.ErrUnavailable) || len(f.sent) != 0 {
		t.Fatalf("after Close: %v", err)
	}
}

// Through the real client against a fake name server and broker: the client returns no
// error for FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT and SLAVE_NOT_AVAILABLE, and the
// publisher answers them ErrOutcomeUnknown; SEND_OK is a success; the broker's
// TOPIC_NOT_EXIST is an unknown topic; a broker that never answers leaves the outcome
// unknown when the request ends.
func TestPublishStatusThroughClient(t *testing.T) {
	broker := listen(t)
	var answer atomic.Int32 // response code to SEND_MESSAGE; -1 = no answer until the test ends
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) })
	go fakeRemoting(broker, func(code int) (int, string, []byte) {
		if code == reqSendMessage {
			c := int(answer.Load())
			if c < 0 {
				<-ended
			}
			return c, "remark", nil
		}
		return resSuccess, "", nil
	})
	ns := listen(t)
	brokers := fmt.Sprintf(`{"brokerAddrs":{0:"%s"},"brokerName":"broker-x","cluster":"c"}`, broker.Addr())
	go fakeRemoting(ns, func(code int) (int, string, []byte) {
		switch code {
		case reqGetRouteInfoByTopic:
			return resSuccess, "", []byte(`{"brokerDatas":[` + brokers + `],"queueDatas":[{"brokerName":"broker-x","perm":6,"readQueueNums":1,"writeQueueNums":1,"topicSysFlag":0}]}`)
		case reqGetBrokerClusterInfo:
			return resSuccess, "", []byte(`{"brokerAddrTable":{"broker-x":` + brokers + `}}`)
		}
		return 1, "unexpected", nil
	})
	cfg := Defaults()
	cfg.Nameservers, cfg.Group, cfg.Topic = []string{ns.Addr().String()}, "g", "t"
	p, err := NewPublisher(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, p.Run)
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	publish := func(timeout time.Duration) error {
		deadline := time.Now().Add(10 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			_, err := p.Publish(ctx, adapters.OutMessage{Topic: "t", ID: "id-1", Payload: []byte("x")})
			cancel()
			if err == nil || !strings.Contains(err.Error(), "not started") || time.Now().After(deadline) {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, c := range []struct {
		code int32
		want error
		name string
	}{
		{0, nil, "SEND_OK"},
		{10, adapters.ErrOutcomeUnknown, "FLUSH_DISK_TIMEOUT"},
		{12, adapters.ErrOutcomeUnknown, "FLUSH_SLAVE_TIMEOUT"},
		{11, adapters.ErrOutcomeUnknown, "SLAVE_NOT_AVAILABLE"},
		{resTopicNotExistSend, adapters.ErrUnknownTopic, "TOPIC_NOT_EXIST"},
		{resSystemBusy, adapters.ErrUnavailable, "SYSTEM_BUSY"},
	} {
		answer.Store(c.code)
		err := publish(5 * time.Second)
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.want) || (errors.Is(c.want, adapters.ErrOutcomeUnknown) && !strings.Contains(err.Error(), c.name)) {
			t.Errorf("broker answers %s: %v, want %v", c.name, err, c.want)
		}
	}
	answer.Store(-1)
	start := time.Now()
	if err := publish(500 * time.Millisecond); !errors.Is(err, adapters.ErrOutcomeUnknown) {
		t.Errorf("no answer: %v, want ErrOutcomeUnknown", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("no answer: returned after %v, the request allowed 500ms", d)
	}
}

// reqSendMessage is the broker's SEND_MESSAGE request code.
const reqSendMessage = 10

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
