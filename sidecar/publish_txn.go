package sidecar

import (
	"context"
	"net/http"

	"golang.org/x/sync/errgroup"

	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/redisstore"
	"github.com/mqsidecar/mqsidecar/publish"
)

// Both stores are the transactions' outbox.
var (
	_ dedup.Outbox = (*dedup.Store)(nil)
	_ dedup.Outbox = (*redisstore.Store)(nil)
)

func init() { publishMounts = append(publishMounts, mountTransactions) }

// mountTransactions adds POST /v1/transactions... (publish.Txn) to the publish endpoint,
// with the store as its outbox and its checker run beside the endpoint. RocketMQ: the
// half messages of a transactional producer of the source's connection settings.
func mountTransactions(p PublishParts) (PublishMount, error) {
	pm := PublishMount{Pattern: "/v1/transactions/", More: []string{"/v1/transactions"}}
	out, ok := p.Records.(dedup.Outbox)
	if !ok {
		pm.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"transactions keep prepared messages in the dedup store, which is disabled (dedup.enabled: false)"}` + "\n"))
		})
		return pm, nil
	}
	o := p.Config.Publish.Transactions.Options()
	o.Store, o.Publisher, o.Logger = out, p.Publisher, p.Logger
	o.PublishTimeout, o.MaxPayload = p.Config.Publish.Timeout, int64(p.Config.Publish.MaxMessageBytes)
	var half *rocketmq.Txn
	if p.Config.Source.Kind == "rocketmq" {
		ho := rocketmq.TxnOptionsFor(p.Config.Source.RocketMQ)
		ho.Logger, ho.SendTimeout = p.Logger, p.Config.Publish.Timeout
		var err error
		if half, err = rocketmq.NewTxn(ho); err != nil {
			return pm, err
		}
		o.Half = half
	}
	m, err := publish.NewTxn(o)
	if err != nil {
		return pm, err
	}
	pm.Handler = m
	pm.Run = func(ctx context.Context) error {
		if half == nil {
			return m.Run(ctx)
		}
		half.SetCheck(m.CheckBack)
		var g errgroup.Group
		g.Go(func() error { return half.Run(ctx) })
		g.Go(func() error { return m.Run(ctx) })
		return g.Wait()
	}
	return pm, nil
}
