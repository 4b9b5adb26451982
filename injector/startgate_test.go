package injector

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStartGate: the native sidecar's startup probe for every combination of the injector's
// default (--wait-for-ready), the pod's annotations and the sidecar mode; the combinations
// in which the pod could never start are refused, naming where the gate came from.
func TestStartGate(t *testing.T) {
	cases := []struct {
		name        string
		defaultWait bool
		ann         map[string]string
		wantProbe   string // "" = no startup probe (regular container)
		wantRefuse  string
	}{
		{name: "default", wantProbe: "/healthz"},
		{name: "app health, default", ann: map[string]string{AnnotationAppHealthPath: "/healthz"}, wantProbe: "/healthz"},
		{name: "annotation true", ann: map[string]string{AnnotationWaitForReady: "true"}, wantProbe: "/readyz"},
		{name: "injector default true", defaultWait: true, wantProbe: "/readyz"},
		{name: "injector default true, annotation false", defaultWait: true, ann: map[string]string{AnnotationWaitForReady: "false"}, wantProbe: "/healthz"},
		{name: "injector default true, annotation false, app health", defaultWait: true,
			ann: map[string]string{AnnotationWaitForReady: "false", AnnotationAppHealthPath: "/healthz"}, wantProbe: "/healthz"},
		{name: "injector default true, app health", defaultWait: true, ann: map[string]string{AnnotationAppHealthPath: "/healthz"},
			wantRefuse: `mqsidecar.io/app-health-path cannot be combined with the injector's default --wait-for-ready (chart value sidecar.waitForReady)`},
		{name: "annotation true, app health", ann: map[string]string{AnnotationWaitForReady: "true", AnnotationAppHealthPath: "/healthz"},
			wantRefuse: `set mqsidecar.io/wait-for-ready: "false"`},
		// A regular container gates nothing: the injector's default does not apply to it, an
		// explicit annotation is a mistake.
		{name: "injector default true, container mode", defaultWait: true, ann: map[string]string{AnnotationSidecarMode: "container"}},
		{name: "injector default true, container mode, app health", defaultWait: true,
			ann: map[string]string{AnnotationSidecarMode: "container", AnnotationAppHealthPath: "/healthz"}},
		{name: "annotation true, container mode", ann: map[string]string{AnnotationWaitForReady: "true", AnnotationSidecarMode: "container"},
			wantRefuse: `needs mqsidecar.io/sidecar-mode "native"`},
		{name: "annotation not a bool", ann: map[string]string{AnnotationWaitForReady: "broker"},
			wantRefuse: `mqsidecar.io/wait-for-ready: must be "true" or "false", got "broker"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := testOptions()
			opts.WaitForReady = c.defaultWait
			inj, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			ann := map[string]string{AnnotationInject: "true", AnnotationConfig: "orders", AnnotationAppPort: "8080"}
			for k, v := range c.ann {
				ann[k] = v
			}
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "orders-", Annotations: ann},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "orders"}}},
			}
			out := inj.MutatePod(pod)
			if c.wantRefuse != "" {
				if out.result != resultDenied || !strings.Contains(out.denial, c.wantRefuse) {
					t.Fatalf("result %s (%s), want a denial containing %q", out.result, out.denial, c.wantRefuse)
				}
				return
			}
			if out.result != resultInjected {
				t.Fatalf("result %s: %s", out.result, out.denial)
			}
			after := applyOutcome(t, pod, out)
			var probe *corev1.Probe
			for _, cs := range [][]corev1.Container{after.Spec.InitContainers, after.Spec.Containers} {
				for _, ctr := range cs {
					if ctr.Name == ContainerName {
						probe = ctr.StartupProbe
					}
				}
			}
			switch {
			case c.wantProbe == "" && probe != nil:
				t.Errorf("startup probe %+v on a regular container", probe.HTTPGet)
			case c.wantProbe != "" && (probe == nil || probe.HTTPGet.Path != c.wantProbe):
				t.Errorf("startup probe = %+v, want %s", probe, c.wantProbe)
			}
		})
	}
}

// applyOutcome applies out's JSON patch to pod, as the API server would.
func applyOutcome(t *testing.T, pod *corev1.Pod, out outcome) *corev1.Pod {
	t.Helper()
	doc, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := json.Marshal(out.patch)
	if err != nil {
		t.Fatal(err)
	}
	mutated, err := applyPatch(doc, patch)
	if err != nil {
		t.Fatalf("applying the patch: %v", err)
	}
	var after corev1.Pod
	if err := json.Unmarshal(mutated, &after); err != nil {
		t.Fatal(err)
	}
	return &after
}
