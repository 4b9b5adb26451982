package rocketmq

import (
	"context"
	"errors"
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

// reqGetRouteInfoByTopic is the name server's GET_ROUTEINFO_BY_TOPIC request code;
// resTopicNotExist its answer for a topic it has no route for (TOPIC_NOT_EXIST).
const (
	reqGetRouteInfoByTopic = 105
	resTopicNotExist       = 17
)

// Why the route of the topic could not be had (errors.Is): no name server answered, or one
// answered that it has no route for the topic.
var (
	ErrNameServerUnreachable = errors.New("rocketmq: name server unreachable")
	ErrTopicNotExist         = errors.New("rocketmq: topic does not exist")
)

// routeError is one name server's failure to give a route; kind is one of the errors above
// or nil (another answer).
type routeError struct {
	msg  string
	kind error
	err  error
}

func (e *routeError) Error() string { return e.msg }
func (e *routeError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// routeErrors joins the failures of several name servers on one line.
type routeErrors []error

func (e routeErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}
func (e routeErrors) Unwrap() []error { return e }

// route asks the name servers, in order, for the route of topic and returns the first
// answer with one. Errors say per name server whether it was unreachable
// (ErrNameServerUnreachable) or answered without a route (ErrTopicNotExist); the adapter
// retries both, a topic may be created later.
func route(nameservers []string, topic string, timeout time.Duration) ([]byte, error) {
	var errs routeErrors
	for _, ns := range nameservers {
		r, err := invoke(ns, reqGetRouteInfoByTopic, map[string]string{"topic": topic}, nil, primitive.Credentials{}, timeout)
		switch {
		case err != nil:
			errs = append(errs, &routeError{
				msg:  fmt.Sprintf("rocketmq: name server %s unreachable: %v", ns, err),
				kind: ErrNameServerUnreachable, err: err,
			})
		case r.Code == resSuccess:
			return r.body, nil
		case r.Code == resTopicNotExist:
			errs = append(errs, &routeError{
				msg: fmt.Sprintf("rocketmq: topic %q does not exist: name server %s answers but has no route for it "+
					"(not created yet, or none of its brokers registered); retried, it may be created later", topic, ns),
				kind: ErrTopicNotExist, err: fmt.Errorf("code %d: %s", r.Code, r.Remark),
			})
		default:
			err := fmt.Errorf("code %d: %s", r.Code, r.Remark)
			errs = append(errs, &routeError{
				msg: fmt.Sprintf("rocketmq: name server %s: route of topic %q: %v", ns, topic, err), err: err,
			})
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errs
}

// probeRoute is route without the body.
func probeRoute(nameservers []string, topic string, timeout time.Duration) error {
	_, err := route(nameservers, topic, timeout)
	return err
}

// probe returns nil when a name server answers with a route for topic and every master
// broker in it accepts a TCP connection.
func probe(nameservers []string, topic string, timeout time.Duration) error {
	body, err := route(nameservers, topic, timeout)
	if err != nil {
		return err
	}
	brokers := masterAddrs(body)
	if len(brokers) == 0 {
		return fmt.Errorf("rocketmq: the name servers know no broker for topic %q", topic)
	}
	for _, addr := range brokers {
		c, err := (&net.Dialer{Timeout: timeout}).DialContext(context.Background(), "tcp", addr)
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
