package rocketmq

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// The Go client notices a broker outage only when a pull times out (30 s) and fails no
// waiting request when a connection drops, so readiness cannot rely on what it logs. The
// probe asks a name server for the topic's route and dials every master broker of it, on
// each health tick: a refused connection shows at once.

// reqGetRouteInfoByTopic is the name server's GET_ROUTEINFO_BY_TOPIC request code.
const reqGetRouteInfoByTopic = 105

var probeOpaque atomic.Int32

// probe returns nil when a name server answers with a route for topic and every master
// broker in it accepts a TCP connection.
func probe(nameservers []string, topic string, timeout time.Duration) error {
	var brokers []string
	var lastErr error
	for _, ns := range nameservers {
		body, err := remotingCall(ns, reqGetRouteInfoByTopic, map[string]string{"topic": topic}, timeout)
		if err != nil {
			lastErr = err
			continue
		}
		brokers = masterAddrs(body)
		lastErr = nil
		break
	}
	if lastErr != nil {
		return fmt.Errorf("rocketmq: route of topic %q (is the broker down?): %w", topic, lastErr)
	}
	if len(brokers) == 0 {
		return fmt.Errorf("rocketmq: the name servers know no broker for topic %q", topic)
	}
	for _, addr := range brokers {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return fmt.Errorf("rocketmq: broker %s unreachable: %w", addr, err)
		}
		c.Close()
	}
	return nil
}

// masterAddrs extracts the master (id 0) address of every broker in a route body. The
// body is RocketMQ's fastjson, whose brokerAddrs maps have unquoted numeric keys
// ({0:"host:port"}), so it is not parsed as JSON.
func masterAddrs(body []byte) []string {
	var out []string
	s := string(body)
	for {
		i := strings.Index(s, `"brokerAddrs":{`)
		if i < 0 {
			return out
		}
		s = s[i+len(`"brokerAddrs":{`):]
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return out
		}
		for _, kv := range strings.Split(s[:end], ",") {
			k, v, ok := strings.Cut(kv, ":")
			if ok && strings.Trim(strings.TrimSpace(k), `"`) == "0" {
				out = append(out, strings.Trim(strings.TrimSpace(v), `"`))
			}
		}
		s = s[end:]
	}
}

// remotingCall sends one RocketMQ remoting request (JSON header codec, no body) and returns
// the response body. Frame: int32 total length, int32 header length (top byte: codec),
// header, body.
func remotingCall(addr string, code int, ext map[string]string, timeout time.Duration) ([]byte, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	header, err := json.Marshal(map[string]any{
		"code": code, "language": "GO", "version": 317, "opaque": probeOpaque.Add(1), "flag": 0, "extFields": ext,
	})
	if err != nil {
		return nil, err
	}
	frame := make([]byte, 8+len(header))
	binary.BigEndian.PutUint32(frame[0:4], uint32(4+len(header)))
	binary.BigEndian.PutUint32(frame[4:8], uint32(len(header)))
	copy(frame[8:], header)
	if _, err := conn.Write(frame); err != nil {
		return nil, err
	}
	var n [4]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size < 4 || size > 16<<20 {
		return nil, fmt.Errorf("response frame of %d bytes", size)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return nil, err
	}
	hl := binary.BigEndian.Uint32(buf[0:4]) & 0xFFFFFF
	if int(hl) > len(buf)-4 {
		return nil, errors.New("response header longer than its frame")
	}
	var resp struct {
		Code   int    `json:"code"`
		Remark string `json:"remark"`
	}
	if err := json.Unmarshal(buf[4:4+hl], &resp); err != nil {
		return nil, fmt.Errorf("response header: %w", err)
	}
	if resp.Code != 0 {
		return nil, fmt.Errorf("code %d: %s", resp.Code, resp.Remark)
	}
	return buf[4+hl:], nil
}
