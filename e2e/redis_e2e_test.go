//go:build e2e

package e2e

import "testing"

// sharedKafka is a Kafka destination whose sidecars use the shared dedup store.
type sharedKafka struct {
	*kafkaEnv
	env []string
}

func (s sharedKafka) sidecarYAML(appURL, dedupPath string) (string, []string) {
	yaml, env := s.kafkaEnv.sidecarYAML(appURL, dedupPath)
	return yaml, append(env, s.env...)
}

// TestRedisE2EStopStart: the shared store's Redis is stopped mid-stream and started again
// once the sidecar reported not ready. Nothing may be acknowledged that the app had not
// answered, the sidecar must not crash, and it resumes by itself.
func TestRedisE2EStopStart(t *testing.T) {
	k := newKafkaE2E(t, "redis-restart", 8)
	runBrokerRestart(t, sharedKafka{k, sharedStoreEnv(t)}, "redis stop/start", true, stopStart(t, "redis.sh"))
}

// TestRedisE2ECrash: the same with Redis killed (SIGKILL) and restarted from its
// append-only file.
func TestRedisE2ECrash(t *testing.T) {
	k := newKafkaE2E(t, "redis-crash", 8)
	runBrokerRestart(t, sharedKafka{k, sharedStoreEnv(t)}, "redis kill-9/restart", false, func(*sidecarProc, func() string) {
		harnessVerb(t, "redis.sh", "restart", "--hard")
	})
}
