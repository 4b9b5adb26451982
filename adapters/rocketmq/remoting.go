package rocketmq

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
)

// A minimal client of RocketMQ's remoting protocol (JSON header codec), for the few requests
// the Go client keeps internal: the name server route (probe.go) and the consumer offsets
// of fleet.go.

// Request and response codes used here (RequestCode and ResponseCode of the Java broker).
const (
	reqHeartbeat            = 34
	reqQueryConsumerOffset  = 14
	reqUpdateConsumerOffset = 15

	resSuccess          = 0
	resQueryNotFound    = 22
	resGroupNotExist    = 26
	resNoPermission     = 16
	responseFlag        = 1 // bit of the header flag that marks a response
	maxRemotingFrameLen = 16 << 20
)

var remotingOpaque atomic.Int32

// remotingReply is a response: code, extension fields, remark and body.
type remotingReply struct {
	Code   int               `json:"code"`
	Remark string            `json:"remark"`
	Ext    map[string]string `json:"extFields"`
	Opaque int32             `json:"opaque"`
	Flag   int               `json:"flag"`
	body   []byte
}

// invoke sends one request on a new connection to addr and returns the response with the
// request's opaque (a broker may send requests of its own first, e.g. a heartbeat's
// NOTIFY_CONSUMER_IDS_CHANGED; they are skipped). With credentials the request is signed as
// the Go client's ACL hook signs it. Frame: int32 length of the rest, int32 header length
// (top byte: codec, 0 = JSON), header, body.
func invoke(addr string, code int, ext map[string]string, body []byte, creds primitive.Credentials, timeout time.Duration) (*remotingReply, error) {
	conn, err := (&net.Dialer{Timeout: timeout}).DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if ext == nil {
		ext = map[string]string{}
	}
	if !creds.IsEmpty() {
		sign(ext, body, creds)
	}
	opaque := remotingOpaque.Add(1)
	header, err := json.Marshal(map[string]any{
		"code": code, "language": "GO", "version": 317, "opaque": opaque, "flag": 0, "extFields": ext,
	})
	if err != nil {
		return nil, err
	}
	frame := make([]byte, 8, 8+len(header)+len(body))
	binary.BigEndian.PutUint32(frame[0:4], uint32(4+len(header)+len(body)))
	binary.BigEndian.PutUint32(frame[4:8], uint32(len(header)))
	frame = append(append(frame, header...), body...)
	if _, err := conn.Write(frame); err != nil {
		return nil, err
	}
	for {
		var n [4]byte
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return nil, err
		}
		size := binary.BigEndian.Uint32(n[:])
		if size < 4 || size > maxRemotingFrameLen {
			return nil, fmt.Errorf("response frame of %d bytes", size)
		}
		buf := make([]byte, size)
		if _, err := io.ReadFull(conn, buf); err != nil {
			return nil, err
		}
		hl := binary.BigEndian.Uint32(buf[0:4])
		if hl>>24 != 0 {
			return nil, fmt.Errorf("response codec %d, want JSON", hl>>24)
		}
		hl &= 0xFFFFFF
		if int(hl) > len(buf)-4 {
			return nil, errors.New("response header longer than its frame")
		}
		var r remotingReply
		if err := json.Unmarshal(buf[4:4+hl], &r); err != nil {
			return nil, fmt.Errorf("response header: %w", err)
		}
		if r.Flag&responseFlag == 0 || r.Opaque != opaque {
			continue // a request from the broker, not our answer
		}
		r.body = buf[4+hl:]
		return &r, nil
	}
}

// sign adds AccessKey and Signature as the Go client's ACLInterceptor does: HMAC-SHA1 over
// the values of AccessKey and the extension fields, sorted by key, then the body.
func sign(ext map[string]string, body []byte, creds primitive.Credentials) {
	ext["AccessKey"] = creds.AccessKey
	keys := make([]string, 0, len(ext))
	for k := range ext {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	mac := hmac.New(sha1.New, []byte(creds.SecretKey))
	for _, k := range keys {
		mac.Write([]byte(ext[k]))
	}
	mac.Write(body)
	ext["Signature"] = base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if creds.SecurityToken != "" {
		ext["SecurityToken"] = creds.SecurityToken
	}
}

// queryOffset returns group's saved offset of mq at the broker addr, -1 when it has none.
func queryOffset(addr, group string, mq primitive.MessageQueue, creds primitive.Credentials) (int64, error) {
	r, err := invoke(addr, reqQueryConsumerOffset, map[string]string{
		"consumerGroup": group, "topic": mq.Topic, "queueId": strconv.Itoa(mq.QueueId), "bname": mq.BrokerName,
		"setZeroIfNotFound": "false",
	}, nil, creds, remotingTimeout)
	switch {
	case err != nil:
		return -1, fmt.Errorf("rocketmq: query offset of %s for %s at %s: %w", mqString(mq), group, addr, err)
	case r.Code == resQueryNotFound:
		return -1, nil
	case r.Code != resSuccess:
		return -1, fmt.Errorf("rocketmq: query offset of %s for %s at %s: code %d: %s", mqString(mq), group, addr, r.Code, r.Remark)
	}
	off, err := strconv.ParseInt(r.Ext["offset"], 10, 64)
	if err != nil {
		return -1, fmt.Errorf("rocketmq: query offset of %s for %s: %q: %w", mqString(mq), group, r.Ext["offset"], err)
	}
	return off, nil
}

// errGroupNotExist: the broker knows no subscription group of that name; errNoPermission:
// the ACL does not allow the request.
var (
	errGroupNotExist = errors.New("subscription group does not exist")
	errNoPermission  = errors.New("no permission")
)

// commitOffset saves group's offset of mq at the broker addr and returns once the broker
// confirmed it (the Go client sends these one-way).
func commitOffset(addr, group string, mq primitive.MessageQueue, off int64, creds primitive.Credentials) error {
	r, err := invoke(addr, reqUpdateConsumerOffset, map[string]string{
		"consumerGroup": group, "topic": mq.Topic, "queueId": strconv.Itoa(mq.QueueId), "bname": mq.BrokerName,
		"commitOffset": strconv.FormatInt(off, 10),
	}, nil, creds, remotingTimeout)
	switch {
	case err != nil:
		return fmt.Errorf("rocketmq: save offset %d of %s for %s at %s: %w", off, mqString(mq), group, addr, err)
	case r.Code == resGroupNotExist:
		return fmt.Errorf("rocketmq: save offset %d of %s for %s at %s: %w (%s)", off, mqString(mq), group, addr, errGroupNotExist, r.Remark)
	case r.Code == resNoPermission:
		return fmt.Errorf("rocketmq: save offset %d of %s for %s at %s: %w (%s)", off, mqString(mq), group, addr, errNoPermission, r.Remark)
	case r.Code != resSuccess:
		return fmt.Errorf("rocketmq: save offset %d of %s for %s at %s: code %d: %s", off, mqString(mq), group, addr, r.Code, r.Remark)
	}
	return nil
}

// announceGroup makes the broker at addr create the subscription group (a broker with
// autoCreateSubscriptionGroup=true, the default, creates the group of any consumer that
// sends a heartbeat): one heartbeat of a consumer with no subscriptions, on a connection
// closed right after, so the broker forgets the consumer at once.
func announceGroup(addr, group, clientID string, creds primitive.Credentials) error {
	body, err := json.Marshal(map[string]any{
		"clientID": clientID,
		"consumerDataSet": []map[string]any{{
			"groupName": group, "consumeType": "CONSUME_PASSIVELY", "messageModel": "CLUSTERING",
			"consumeFromWhere": "CONSUME_FROM_LAST_OFFSET", "subscriptionDataSet": []any{}, "unitMode": false,
		}},
		"producerDataSet": []any{},
	})
	if err != nil {
		return err
	}
	r, err := invoke(addr, reqHeartbeat, nil, body, creds, remotingTimeout)
	switch {
	case err != nil:
		return fmt.Errorf("rocketmq: heartbeat for group %s to %s: %w", group, addr, err)
	case r.Code != resSuccess:
		return fmt.Errorf("rocketmq: heartbeat for group %s to %s: code %d: %s", group, addr, r.Code, r.Remark)
	}
	return nil
}

// remotingTimeout bounds one request of this file (dial, send, answer).
const remotingTimeout = 3 * time.Second

func mqString(mq primitive.MessageQueue) string {
	return fmt.Sprintf("%s/%s/%d", mq.Topic, mq.BrokerName, mq.QueueId)
}
