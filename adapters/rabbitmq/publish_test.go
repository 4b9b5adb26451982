package rabbitmq

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// The AMQP message carries what the consumer side reads back: message_id = ID (its default
// ID source), the content type, the headers; persistent.
func TestPublishingFields(t *testing.T) {
	m := adapters.OutMessage{
		Topic: "orders", RoutingKey: "created", ID: "id-1", ContentType: "application/json",
		Headers: []adapters.Header{{Key: "ce-type", Value: "a"}, {Key: "x", Value: "1"}, {Key: "x", Value: "2"}},
		Payload: []byte("body"),
	}
	p := publishing(m)
	if p.MessageId != "id-1" || p.ContentType != "application/json" || p.DeliveryMode != amqp.Persistent || string(p.Body) != "body" {
		t.Fatalf("publishing %+v", p)
	}
	if p.Headers["ce-type"] != "a" || p.Headers["x"] != "2" || len(p.Headers) != 2 {
		t.Fatalf("headers %v", p.Headers)
	}
	if p.Timestamp.IsZero() {
		t.Fatal("no timestamp")
	}
}

// Why a channel closed under a publish decides the answer: 404 is an unknown exchange,
// a channel exception refusing the message is a rejection, a lost connection leaves the
// outcome unknown.
func TestClassifyClose(t *testing.T) {
	for _, c := range []struct {
		e    *amqp.Error
		want error
	}{
		{&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'x' in vhost '/'", Server: true}, adapters.ErrUnknownTopic},
		{&amqp.Error{Code: amqp.AccessRefused, Reason: "ACCESS_REFUSED", Server: true}, adapters.ErrRejected},
		{&amqp.Error{Code: amqp.PreconditionFailed, Reason: "PRECONDITION_FAILED", Server: true}, adapters.ErrRejected},
		{&amqp.Error{Code: amqp.FrameError, Reason: "EOF"}, adapters.ErrOutcomeUnknown},
		{&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}, adapters.ErrOutcomeUnknown},
		{amqp.ErrClosed, adapters.ErrOutcomeUnknown},
	} {
		if err := classifyClose(c.e); !errors.Is(err, c.want) {
			t.Errorf("%v: %v, want %v", c.e, err, c.want)
		}
	}
}

// What AMQP cannot carry is refused before anything is sent.
func TestCheckOut(t *testing.T) {
	long := strings.Repeat("a", 256)
	ok := adapters.OutMessage{Topic: "x", ID: "id"}
	if err := checkOut(ok); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]adapters.OutMessage{
		"no id":       {Topic: "x"},
		"long id":     {ID: long},
		"long topic":  {ID: "i", Topic: long},
		"long key":    {ID: "i", RoutingKey: long},
		"long type":   {ID: "i", ContentType: long},
		"long header": {ID: "i", Headers: []adapters.Header{{Key: long, Value: "v"}}},
	} {
		if err := checkOut(m); !errors.Is(err, adapters.ErrRejected) {
			t.Errorf("%s: %v, want ErrRejected", name, err)
		}
	}
}

// Before Run connected, and after Close, Publish answers ErrUnavailable at once.
func TestPublishUnavailableWithoutConnection(t *testing.T) {
	cfg := Defaults()
	cfg.URL = settings.Secret("amqp://guest:guest@127.0.0.1:1/")
	cfg.Queue = "q"
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := adapters.OutMessage{Topic: "x", ID: "id", Payload: []byte("x")}
	if _, err := p.Publish(ctx, m); !errors.Is(err, adapters.ErrUnavailable) || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("before Run: %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, m); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("after Close: %v", err)
	}
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
}

// publish_channels is checked.
func TestPublishChannelsChecked(t *testing.T) {
	cfg := Defaults()
	cfg.URL = settings.Secret("amqp://guest:guest@127.0.0.1:5672/")
	cfg.Queue = "q"
	for _, n := range []int{0, 1025} {
		cfg.PublishChannels = n
		if _, err := NewPublisher(cfg); err == nil || !strings.Contains(err.Error(), "publish_channels") {
			t.Errorf("publish_channels %d: %v", n, err)
		}
	}
}
