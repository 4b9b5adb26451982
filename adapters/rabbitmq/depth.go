package rabbitmq

import (
	"context"
	"fmt"
	"net/http"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Queue depth (adapters.QueueGauges): while a session lives, every depthInterval, the
// source reports the queue's ready messages and consumers from a passive queue.declare on
// a throwaway channel of its own connection (cheap: one round trip, no management plugin),
// or, when source.rabbitmq.management_url is set, from the management API, which also
// reports the unacknowledged messages. A failed management request falls back to the
// passive declare, so the ready count never goes stale while AMQP works.

// depthInterval is how often the queue depth is read.
const depthInterval = 15 * time.Second

// mgmtAPI is the management API the depth is read from; nil without management_url.
type mgmtAPI struct {
	base, user, password string
	client               *http.Client
}

// newMgmtAPI returns the management API of cfg, nil when it has no management_url. The
// user and password default to the AMQP URL's (uri).
func newMgmtAPI(cfg Settings, uri amqp.URI) *mgmtAPI {
	if cfg.ManagementURL == "" {
		return nil
	}
	m := &mgmtAPI{
		base: cfg.ManagementURL, user: cfg.ManagementUsername, password: cfg.ManagementPassword.Reveal(),
		client: &http.Client{Timeout: 5 * time.Second},
	}
	if m.user == "" {
		m.user = uri.Username
	}
	if m.password == "" {
		m.password = uri.Password
	}
	return m
}

// depth reads the queue's depth from the management API. The broker fills the counts in
// only after its first statistics round, so an answer without them is an error.
func (m *mgmtAPI) depth(ctx context.Context, vhost, queue string) (adapters.QueueDepth, error) {
	var q struct {
		Ready     *int64 `json:"messages_ready"`
		Unacked   *int64 `json:"messages_unacknowledged"`
		Consumers *int   `json:"consumers"`
	}
	if err := mgmtGetQueue(ctx, m.client, m.base, m.user, m.password, vhost, queue, &q); err != nil {
		return adapters.QueueDepth{}, err
	}
	if q.Ready == nil || q.Unacked == nil || q.Consumers == nil {
		return adapters.QueueDepth{}, fmt.Errorf("management API: queue %q has no message counts yet", queue)
	}
	return adapters.QueueDepth{Ready: *q.Ready, Unacked: *q.Unacked, HasUnacked: true, Consumers: *q.Consumers}, nil
}

// watchDepth reports the queue depth until the session dies or the source closes.
func (ss *session) watchDepth(g adapters.QueueGauges, interval time.Duration) {
	defer close(ss.depthDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if d, ok := ss.readDepth(); ok {
			g.SetQueueDepth(ss.s.queue, d)
		}
		select {
		case <-ss.dead:
			return
		case <-ss.s.closing:
			return
		case <-t.C:
		}
	}
}

// readDepth reads the depth from the management API, else by a passive declare; false when
// neither answered (a dead connection: the session's watcher reports that).
func (ss *session) readDepth() (adapters.QueueDepth, bool) {
	s := ss.s
	if s.mgmt != nil {
		ctx, cancel := context.WithTimeout(s.runCtx, 5*time.Second)
		d, err := s.mgmt.depth(ctx, s.vhost, s.queue)
		cancel()
		if err == nil {
			return d, true
		}
		s.log.Debug("rabbitmq: queue depth from the management API failed; using queue.declare", "error", err.Error())
	}
	var q amqp.Queue
	err := onThrowaway(ss.conn, func(ch *amqp.Channel) (err error) {
		q, err = ch.QueueDeclarePassive(s.queue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return adapters.QueueDepth{}, false
	}
	return adapters.QueueDepth{Ready: int64(q.Messages), Consumers: q.Consumers}, true
}
