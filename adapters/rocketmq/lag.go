package rocketmq

import (
	"fmt"
	"strconv"

	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// reqGetMaxOffset is the broker's GET_MAX_OFFSET request code: the offset after the last
// message of one message queue.
const reqGetMaxOffset = 30

// queueLag returns, for each message queue the client holds now, the broker's max offset
// minus the client's consumer offset (adapters.QueueGauges). A queue without a consumer
// offset yet, or whose broker did not answer, is left out of this report; after a broker
// failed to answer, its other queues are not asked this time (an unreachable broker costs
// one timeout a tick, not one a queue: the health loop that calls this also refreshes Ready).
func (s *Source) queueLag() map[adapters.QueueID]int64 {
	owned := s.memoryOffsets()
	lag := make(map[adapters.QueueID]int64, len(owned))
	failed := map[string]bool{}
	for mq, off := range owned {
		if off < 0 || failed[mq.BrokerName] {
			continue
		}
		head, err := s.maxOffset(mq)
		if err != nil {
			failed[mq.BrokerName] = true
			s.log.Debug("rocketmq: queue lag not read", "queue", mqString(mq), "error", err.Error())
			continue
		}
		lag[adapters.QueueID{Topic: mq.Topic, Broker: mq.BrokerName, ID: mq.QueueId}] = max(head-off, 0)
	}
	return lag
}

// maxOffset asks mq's broker for the queue's max offset.
func (s *Source) maxOffset(mq primitive.MessageQueue) (int64, error) {
	addr, err := s.brokerAddr(mq)
	if err != nil {
		return 0, err
	}
	r, err := invoke(addr, reqGetMaxOffset, map[string]string{
		"topic": mq.Topic, "queueId": strconv.Itoa(mq.QueueId), "bname": mq.BrokerName,
	}, nil, s.creds, remotingTimeout)
	switch {
	case err != nil:
		return 0, fmt.Errorf("rocketmq: max offset of %s at %s: %w", mqString(mq), addr, err)
	case r.Code != resSuccess:
		return 0, fmt.Errorf("rocketmq: max offset of %s at %s: code %d: %s", mqString(mq), addr, r.Code, r.Remark)
	}
	return strconv.ParseInt(r.Ext["offset"], 10, 64)
}
