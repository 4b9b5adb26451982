package rocketmq

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
)

// The Go client notices a broker outage only when a pull times out (30 s) and fails no
// waiting request when a connection drops, so readiness cannot rely on what it logs. The
// probe asks a name server for the topic's route and dials every master broker of it, on
// each health tick: a refused connection shows at once.

// reqGetRouteInfoByTopic is the name server's GET_ROUTEINFO_BY_TOPIC request code.
const reqGetRouteInfoByTopic = 105

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

// masterAddrByName maps each broker name in a route body to its master (id 0) address;
// see masterAddrs for the format (fastjson writes brokerAddrs before brokerName).
func masterAddrByName(body []byte) map[string]string {
	out := map[string]string{}
	s := string(body)
	for {
		i := strings.Index(s, `"brokerAddrs":{`)
		if i < 0 {
			return out
		}
		s = s[i:]
		addrs := masterAddrs([]byte(s[:strings.IndexByte(s, '}')+1]))
		j := strings.Index(s, `"brokerName":"`)
		if j < 0 {
			return out
		}
		s = s[j+len(`"brokerName":"`):]
		end := strings.IndexByte(s, '"')
		if end < 0 {
			return out
		}
		if len(addrs) > 0 {
			out[s[:end]] = addrs[0]
		}
		s = s[end:]
	}
}

// remotingCall sends one request (no body, unsigned) and returns the response body when
// the answer is a success.
func remotingCall(addr string, code int, ext map[string]string, timeout time.Duration) ([]byte, error) {
	r, err := invoke(addr, code, ext, nil, primitive.Credentials{}, timeout)
	if err != nil {
		return nil, err
	}
	if r.Code != resSuccess {
		return nil, fmt.Errorf("code %d: %s", r.Code, r.Remark)
	}
	return r.body, nil
}
