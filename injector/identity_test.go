package injector

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPodIdentity: static membership follows the stability of the pod name, for every kind
// of pod the webhook sees; the RocketMQ instance name is the pod name wherever it fits.
func TestPodIdentity(t *testing.T) {
	owner := func(apiVersion, kind, name string, controller bool) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, UID: "u", Controller: &controller}}
	}
	meta := func(name, generateName string, refs []metav1.OwnerReference) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, GenerateName: generateName, OwnerReferences: refs}
	}
	yes, no := true, false
	long := strings.Repeat("a", 65)
	cases := []struct {
		name       string
		meta       metav1.ObjectMeta
		kafka      *bool // the annotation; nil = absent
		rocketmq   *bool
		wantKafka  bool
		wantRMQ    bool
		wantRefuse string // substring of the refusal, "" = accepted
	}{
		{name: "statefulset", meta: meta("orders-0", "orders-", owner("apps/v1", "StatefulSet", "orders", true)), wantKafka: true, wantRMQ: true},
		{name: "kruise statefulset", meta: meta("orders-2", "orders-", owner("apps.kruise.io/v1beta1", "StatefulSet", "orders", true)), wantKafka: true, wantRMQ: true},
		{name: "statefulset, explicit false", meta: meta("orders-0", "orders-", owner("apps/v1", "StatefulSet", "orders", true)), kafka: &no, wantRMQ: true},
		{name: "statefulset, explicit true", meta: meta("orders-0", "orders-", owner("apps/v1", "StatefulSet", "orders", true)), kafka: &yes, wantKafka: true, wantRMQ: true},
		// A StatefulSet that is only an owner, not the controller, does not name the pod.
		{name: "statefulset not controller", meta: meta("orders-x", "", owner("apps/v1", "StatefulSet", "orders", false)), wantRMQ: true},
		{name: "replicaset, name not generated yet", meta: meta("", "orders-6d5f8c7b9-", owner("apps/v1", "ReplicaSet", "orders-6d5f8c7b9", true)), wantRMQ: true},
		{name: "replicaset, name generated", meta: meta("orders-6d5f8c7b9-x2kqz", "orders-6d5f8c7b9-", owner("apps/v1", "ReplicaSet", "orders-6d5f8c7b9", true)), wantRMQ: true},
		{name: "replicaset, explicit true", meta: meta("", "orders-6d5f8c7b9-", owner("apps/v1", "ReplicaSet", "orders-6d5f8c7b9", true)), kafka: &yes,
			wantRefuse: "it is created by ReplicaSet orders-6d5f8c7b9, whose replacement pods get new names"},
		{name: "job, explicit true", meta: meta("", "import-", owner("batch/v1", "Job", "import", true)), kafka: &yes,
			wantRefuse: "it is created by Job import"},
		{name: "daemonset", meta: meta("", "agent-", owner("apps/v1", "DaemonSet", "agent", true)), wantRMQ: true},
		{name: "bare, generateName, explicit true", meta: meta("", "debug-", nil), kafka: &yes, wantRefuse: `its name is generated (generateName "debug-")`},
		{name: "bare, named", meta: meta("orders-debug", "", nil), wantRMQ: true},
		{name: "bare, named, explicit true", meta: meta("orders-debug", "", nil), kafka: &yes, wantKafka: true, wantRMQ: true},
		{name: "named pod of another controller, explicit true", meta: meta("kafka-0", "", owner("core.strimzi.io/v1beta2", "StrimziPodSet", "kafka", true)), kafka: &yes,
			wantRefuse: "it is created by StrimziPodSet kafka"},
		{name: "rocketmq explicit false", meta: meta("", "orders-6d5f8c7b9-", owner("apps/v1", "ReplicaSet", "orders-6d5f8c7b9", true)), rocketmq: &no},
		{name: "name too long for rocketmq", meta: meta(long, "", nil)},
		{name: "name too long for rocketmq, explicit true", meta: meta(long, "", nil), rocketmq: &yes, wantRefuse: "the pod name has 65 characters"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: c.meta}
			id, err := podIdentity(pod, settings{staticMembership: c.kafka, rocketmqInstanceName: c.rocketmq})
			if c.wantRefuse != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantRefuse) {
					t.Fatalf("error = %v, want a refusal containing %q", err, c.wantRefuse)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if id.kafkaGroupInstanceID != c.wantKafka || id.rocketmqInstanceName != c.wantRMQ {
				t.Errorf("group instance ID %v, instance name %v; want %v, %v", id.kafkaGroupInstanceID, id.rocketmqInstanceName, c.wantKafka, c.wantRMQ)
			}
		})
	}
}
