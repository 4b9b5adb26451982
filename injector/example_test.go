package injector

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/mqsidecar/mqsidecar/config"
)

// TestExampleWorkloadConfigLoads runs the chart's example workload through the webhook and
// loads what the injected sidecar would load — the ConfigMap's file plus the injected
// environment — with the real config loader. It proves that every MQSIDECAR_* variable the
// injector sets is a valid key and that the documented example is a valid configuration.
func TestExampleWorkloadConfigLoads(t *testing.T) {
	raw, err := os.ReadFile("../charts/mqsidecar/examples/orders.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	var dep appsv1.Deployment
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		mustUnmarshal(t, js, &tm)
		switch tm.Kind {
		case "ConfigMap":
			strictDecode(t, js, &cm)
		case "Deployment":
			strictDecode(t, js, &dep)
		default:
			t.Fatalf("unexpected kind %q in the example", tm.Kind)
		}
	}

	const podName = "orders-7d9c8b6f5-x2kqz"
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: *dep.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *dep.Spec.Template.Spec.DeepCopy(),
	}
	pod.Namespace = dep.Namespace
	podJSON, _ := json.Marshal(pod)
	review, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "example", Kind: podKind, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: pod.Namespace, Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: podJSON},
		},
	})
	resp := decodeResponse(t, post(t, newTestHandler(t, nil), review))
	if !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("example not injected: %+v", resp.Result)
	}
	mutated, err := applyPatch(podJSON, resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	var injected corev1.Pod
	strictDecode(t, mutated, &injected)
	c, native := sidecar(t, &injected)
	if !native || c.StartupProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("example: want a native sidecar whose startup probe does not wait for the app")
	}

	// The file the sidecar reads: the ConfigMap key the volume maps to config.yaml.
	cmVol := volume(t, &injected, ConfigVolume).ConfigMap
	if cmVol.Name != cm.Name {
		t.Fatalf("the pod mounts ConfigMap %q, the example defines %q", cmVol.Name, cm.Name)
	}
	file, ok := cm.Data[cmVol.Items[0].Key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q", cm.Name, cmVol.Items[0].Key)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	// The environment the kubelet would give the container.
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = podName
			case "metadata.namespace":
				v = injected.Namespace
			}
		}
		for name, val := range env {
			v = strings.ReplaceAll(v, "$("+name+")", val)
		}
		env[e.Name] = v
		t.Setenv(e.Name, v)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatalf("the sidecar would refuse its configuration:\n%v", err)
	}
	for got, want := range map[string]string{
		cfg.App.URL:       "http://127.0.0.1:8080/messages",
		cfg.App.HealthURL: "http://127.0.0.1:8080/healthz",
		cfg.Dedup.Path:    DataDir + "/dedup.db",
		cfg.Admin.Listen:  "0.0.0.0:9464",
		// A Deployment's pod: no static membership (its name does not come back).
		cfg.Source.Kafka.GroupInstanceID: "",
		cfg.Source.RocketMQ.InstanceName: podName,
	} {
		if got != want {
			t.Errorf("loaded %q, want %q", got, want)
		}
	}
}
