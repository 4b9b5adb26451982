package injector

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testOptions mirror the inject command's defaults with a fixed image.
func testOptions() Options {
	return Options{
		Image:           "ghcr.io/mqsidecar/mqsidecar:1.0.0",
		ImagePullPolicy: corev1.PullIfNotPresent,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		MinTerminationGracePeriod: 45 * time.Second,
	}
}

func newTestHandler(t *testing.T, reg prometheus.Registerer) *Handler {
	t.Helper()
	inj, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	return NewHandler(inj, nil, NewMetrics(reg))
}

// result is what one fixture produced: the response, and the object with the patch applied.
type result struct {
	req    *admissionv1.AdmissionRequest
	resp   *admissionv1.AdmissionResponse
	before []byte // request object
	after  []byte // request object with the patch applied (== before without a patch)
}

// caseChecks holds the assertions of every fixture testdata/<name>.in.json. A fixture
// without an entry fails the test, so no case is only golden-compared.
var caseChecks = map[string]func(t *testing.T, r result){
	"pod-native-default": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		c, native := sidecar(t, pod)
		if !native {
			t.Fatal("default must be a native sidecar (init container)")
		}
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("native sidecar restartPolicy = %v, want Always", c.RestartPolicy)
		}
		// The app starts once the sidecar started, not once its broker answers: a broker
		// outage must not keep new pods from starting.
		if c.StartupProbe == nil || c.StartupProbe.HTTPGet == nil || c.StartupProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("startup probe = %+v, want HTTP GET /healthz", c.StartupProbe)
		}
		if c.StartupProbe.HTTPGet.Port.StrVal != AdminPortName {
			t.Errorf("startup probe port = %v, want %s", c.StartupProbe.HTTPGet.Port, AdminPortName)
		}
		if len(pod.Spec.InitContainers) != 1 {
			t.Errorf("initContainers = %d, want the sidecar only", len(pod.Spec.InitContainers))
		}
		wantEnv(t, c, "MQSIDECAR_APP_URL", "http://127.0.0.1:8080/messages")
		wantEnv(t, c, "MQSIDECAR_ADMIN_LISTEN", "0.0.0.0:9464")
		wantEnv(t, c, "MQSIDECAR_DEDUP_PATH", "/var/lib/mqsidecar/dedup.db")
		// A ReplicaSet's pod: its name is generated, no static membership.
		noEnv(t, c, "MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID")
		wantEnv(t, c, "MQSIDECAR_SOURCE_ROCKETMQ_INSTANCE_NAME", "$(POD_NAME)")
		if len(c.EnvFrom) != 0 || len(c.VolumeMounts) != 2 || len(pod.Spec.Volumes) != 3 {
			t.Errorf("no Secret references by default: envFrom %v, mounts %v, volumes %v", c.EnvFrom, c.VolumeMounts, pod.Spec.Volumes)
		}
		if e := findEnv(c, "POD_NAME"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
			t.Errorf("POD_NAME must come from the downward API metadata.name, got %+v", e)
		}
		noEnv(t, c, "MQSIDECAR_LOG_LEVEL")
		if c.Image != "ghcr.io/mqsidecar/mqsidecar:1.0.0" {
			t.Errorf("image = %s", c.Image)
		}
		if !slices.Equal(c.Args, []string{"run", "--config", "/etc/mqsidecar/config.yaml"}) {
			t.Errorf("args = %q", c.Args)
		}
		wantResources(t, c, "50m", "", "64Mi", "256Mi")
		cm := volume(t, pod, ConfigVolume).ConfigMap
		if cm == nil || cm.Name != "orders-mqsidecar" || len(cm.Items) != 1 || cm.Items[0].Key != "config.yaml" || cm.Items[0].Path != "config.yaml" {
			t.Errorf("config volume = %+v", cm)
		}
		if volume(t, pod, DedupVolume).EmptyDir == nil {
			t.Error("dedup volume must be an emptyDir")
		}
		if got := *pod.Spec.TerminationGracePeriodSeconds; got != 45 {
			t.Errorf("terminationGracePeriodSeconds = %d, want raised to 45", got)
		}
		if pod.Labels[LabelInjected] != "true" || pod.Labels["app"] != "orders" {
			t.Errorf("labels = %v", pod.Labels)
		}
		sc := c.SecurityContext
		if sc == nil || !*sc.RunAsNonRoot || *sc.RunAsUser != NonRootUID || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("security context = %+v", sc)
		}
	},
	"pod-container-mode-all-annotations": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		c, native := sidecar(t, pod)
		if native {
			t.Fatal("sidecar-mode: container must inject a regular container")
		}
		if c.RestartPolicy != nil || c.StartupProbe != nil {
			t.Errorf("regular container must have no restartPolicy/startupProbe, got %v %v", c.RestartPolicy, c.StartupProbe)
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("probes: readiness %+v liveness %+v", c.ReadinessProbe, c.LivenessProbe)
		}
		if len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Name != "migrate" {
			t.Errorf("init containers changed: %+v", pod.Spec.InitContainers)
		}
		if c.Image != "registry.example.com/mqsidecar:0.2.0" {
			t.Errorf("image = %s", c.Image)
		}
		wantEnv(t, c, "MQSIDECAR_APP_URL", "http://127.0.0.1:3000/in?source=mq")
		wantEnv(t, c, "MQSIDECAR_APP_HEALTH_URL", "http://127.0.0.1:3000/health")
		wantEnv(t, c, "MQSIDECAR_LOG_LEVEL", "debug")
		wantEnv(t, c, "MQSIDECAR_ADMIN_LISTEN", "0.0.0.0:9500")
		noEnv(t, c, "MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID")
		if c.Ports[0].ContainerPort != 9500 {
			t.Errorf("admin port = %d", c.Ports[0].ContainerPort)
		}
		wantResources(t, c, "200m", "1", "128Mi", "512Mi")
		if cm := volume(t, pod, ConfigVolume).ConfigMap; cm.Items[0].Key != "kafka.yaml" || cm.Items[0].Path != "config.yaml" {
			t.Errorf("config-key not honoured: %+v", cm.Items)
		}
		if pod.Labels[LabelInjected] != "true" {
			t.Errorf("labels (absent before) = %v", pod.Labels)
		}
	},
	"pod-native-after-init-containers": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		if n := len(pod.Spec.InitContainers); n != 2 || pod.Spec.InitContainers[0].Name != "migrate" || pod.Spec.InitContainers[1].Name != ContainerName {
			t.Errorf("sidecar must be appended after existing init containers: %v", containerNames(pod.Spec.InitContainers))
		}
		c, _ := sidecar(t, pod)
		noEnv(t, c, "MQSIDECAR_APP_URL") // no app-port: the config file decides
		if got := *pod.Spec.TerminationGracePeriodSeconds; got != 120 {
			t.Errorf("terminationGracePeriodSeconds = %d, a longer one must be kept (120)", got)
		}
	},
	"pod-native-app-health": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		c, native := sidecar(t, pod)
		wantEnv(t, c, "MQSIDECAR_APP_HEALTH_URL", "http://127.0.0.1:8080/healthz")
		// The app starts only after the startup probe passed, and /readyz waits for the app.
		if !native || c.StartupProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("with app health gating the native startup probe must use /healthz: startup %+v readiness %+v",
				c.StartupProbe.HTTPGet, c.ReadinessProbe.HTTPGet)
		}
	},
	"pod-wait-for-ready": func(t *testing.T, r result) {
		c, native := sidecar(t, injectedPod(t, r))
		if !native || c.StartupProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("wait-for-ready: startup probe %+v, liveness %+v; want /readyz and /healthz",
				c.StartupProbe.HTTPGet, c.LivenessProbe.HTTPGet)
		}
	},
	"pod-wait-for-ready-app-health": deniedWith(
		`mqsidecar.io/app-health-path cannot be combined with mqsidecar.io/wait-for-ready: "true": the sidecar is ready ` +
			`only once the app's health URL answers, and with mqsidecar.io/wait-for-ready: "true" the app's containers ` +
			`start only once the sidecar is ready, so the pod would never start.`,
	),
	"pod-wait-for-ready-container-mode": deniedWith(
		`mqsidecar.io/wait-for-ready: "true" needs mqsidecar.io/sidecar-mode "native": a regular sidecar container does not hold`,
	),
	"pod-unannotated":         unchanged(""),
	"pod-inject-false":        unchanged(""),
	"pod-already-injected":    unchanged(""),
	"pod-update-operation":    unchanged(""),
	"deployment-not-a-pod":    unchanged(""),
	"configmap-not-a-pod":     unchanged(""),
	"statefulset-unannotated": unchanged(""),
	"statefulset-emptydir":    unchanged(""),
	"pod-has-mqsidecar-container": func(t *testing.T, r result) {
		unchanged(`already has a container named "mqsidecar"`)(t, r)
	},
	"pod-invalid-annotations": deniedWith(
		`mqsidecar.io/app-port: must be a port number 1-65535, got "http"`,
		`mqsidecar.io/log-level: must be one of debug, info, warn, error; got "loud"`,
		`mqsidecar.io/cpu-request: "lots" is not a positive Kubernetes quantity`,
		`mqsidecar.io/memory-request 1Gi is greater than mqsidecar.io/memory-limit 256Mi`,
		`mqsidecar.io/app-prot: unknown annotation (did you mean mqsidecar.io/app-port?)`,
		`mqsidecar.io/sidecar-mode: must be "native" or "container", got "sidecar"`,
		`mqsidecar.io/app-path: must be an absolute path`,
		`mqsidecar.io/config: "Orders_Config" is not a valid ConfigMap name`,
	),
	"pod-missing-config":           deniedWith(`mqsidecar.io/config: required`),
	"pod-invalid-inject-value":     deniedWith(`mqsidecar.io/inject: must be "true" or "false", got "yes please"`),
	"pod-admin-port-conflict":      deniedWith(`container "orders" already uses port 9464, the sidecar admin port; set mqsidecar.io/admin-port`),
	"pod-dedup-pvc-without-volume": deniedWith(`mqsidecar.io/dedup-storage: "pvc" needs a volume named "mqsidecar-dedup"`),
	"pod-statefulset-with-dedup-pvc": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		if len(r.resp.Warnings) != 0 {
			t.Errorf("warnings = %q", r.resp.Warnings)
		}
		v := volume(t, pod, DedupVolume)
		if v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "mqsidecar-dedup-orders-0" {
			t.Errorf("the StatefulSet's PVC must be mounted, not replaced: %+v", v)
		}
		c, _ := sidecar(t, pod)
		// A StatefulSet's pod comes back under its name: static membership by default.
		wantEnv(t, c, "MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID", "$(POD_NAME)")
		wantEnv(t, c, "MQSIDECAR_SOURCE_ROCKETMQ_INSTANCE_NAME", "$(POD_NAME)")
		if m := c.VolumeMounts[0]; m.Name != DedupVolume || m.MountPath != DataDir {
			t.Errorf("dedup mount = %+v", m)
		}
	},
	"pod-statefulset-without-dedup-pvc": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		if volume(t, pod, DedupVolume).EmptyDir == nil {
			t.Error("fallback must be an emptyDir")
		}
		if len(r.resp.Warnings) != 1 || !strings.Contains(r.resp.Warnings[0], "emptyDir") {
			t.Errorf("want one warning about the emptyDir fallback, got %q", r.resp.Warnings)
		}
	},
	"statefulset-dedup-pvc": func(t *testing.T, r result) {
		sts := statefulSet(t, r)
		if len(sts.Spec.VolumeClaimTemplates) != 1 {
			t.Fatalf("volumeClaimTemplates = %d, want 1", len(sts.Spec.VolumeClaimTemplates))
		}
		pvc := sts.Spec.VolumeClaimTemplates[0]
		if pvc.Name != DedupVolume || pvc.Spec.Resources.Requests.Storage().String() != "2Gi" ||
			pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "fast-ssd" ||
			!slices.Equal(pvc.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
			t.Errorf("claim template = %+v", pvc)
		}
		if fg := sts.Spec.Template.Spec.SecurityContext.FSGroup; fg == nil || *fg != NonRootUID {
			t.Errorf("fsGroup = %v, want %d so the nonroot sidecar can write the volume", fg, NonRootUID)
		}
		if len(sts.Spec.Template.Spec.InitContainers) != 0 {
			t.Error("the StatefulSet template must not get the sidecar: the pod mutation adds it")
		}
	},
	"statefulset-existing-claims-and-fsgroup": func(t *testing.T, r result) {
		sts := statefulSet(t, r)
		if names := []string{sts.Spec.VolumeClaimTemplates[0].Name, sts.Spec.VolumeClaimTemplates[1].Name}; !slices.Equal(names, []string{"data", DedupVolume}) {
			t.Errorf("claim templates = %v", names)
		}
		if q := sts.Spec.VolumeClaimTemplates[1].Spec.Resources.Requests.Storage(); q.String() != "1Gi" {
			t.Errorf("default size = %s", q)
		}
		if *sts.Spec.Template.Spec.SecurityContext.FSGroup != 1000 {
			t.Error("an owner's fsGroup must not be changed")
		}
		if len(r.resp.Warnings) != 1 || !strings.Contains(r.resp.Warnings[0], "fsGroup is 1000") {
			t.Errorf("warnings = %q", r.resp.Warnings)
		}
	},
	"statefulset-invalid-annotations": deniedWith(
		`mqsidecar.io/dedup-storage-size: "big" is not a positive quantity`,
		`mqsidecar.io/dedup-storage: must be "auto", "emptydir" or "pvc", got "disk"`,
		`mqsidecar.io/secret-env: "MQSIDECAR_DEDUP_REDIS_PASSWORD" is not NAME=SECRET/KEY`,
	),
	"pod-secrets": func(t *testing.T, r result) {
		pod := injectedPod(t, r)
		c, _ := sidecar(t, pod)
		for name, ref := range map[string][2]string{
			"MQSIDECAR_DEDUP_REDIS_PASSWORD":       {"orders-redis", "password"},
			"MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD": {"kafka-credentials", "password"},
		} {
			e := findEnv(c, name)
			if e == nil || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
				e.ValueFrom.SecretKeyRef.Name != ref[0] || e.ValueFrom.SecretKeyRef.Key != ref[1] {
				t.Errorf("env %s = %+v, want only a secretKeyRef to %s/%s", name, e, ref[0], ref[1])
			}
		}
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != "orders-mqsidecar-env" ||
			c.EnvFrom[0].ConfigMapRef != nil {
			t.Errorf("envFrom = %+v, want the Secret orders-mqsidecar-env", c.EnvFrom)
		}
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m
		}
		for i, secret := range []string{"redis-tls", "kafka-tls"} {
			name := SecretVolumePrefix + strconv.Itoa(i)
			if v := volume(t, pod, name); v.Secret == nil || v.Secret.SecretName != secret {
				t.Errorf("volume %s = %+v, want Secret %s", name, v.VolumeSource, secret)
			}
			if m, ok := mounts[name]; !ok || m.MountPath != SecretsDir+"/"+secret || !m.ReadOnly {
				t.Errorf("mount of %s = %+v, want read-only at %s/%s", name, m, SecretsDir, secret)
			}
		}
		// The application's containers get none of it.
		for _, app := range pod.Spec.Containers {
			if len(app.EnvFrom) != 0 || slices.ContainsFunc(app.VolumeMounts, func(m corev1.VolumeMount) bool {
				return strings.HasPrefix(m.Name, SecretVolumePrefix)
			}) {
				t.Errorf("container %s got the sidecar's Secrets", app.Name)
			}
		}
	},
	"pod-secrets-invalid": deniedWith(
		`mqsidecar.io/secret-env: "MQSIDECAR_DEDUP_REDIS_PASSWORD=orders-redis" is not NAME=SECRET/KEY; `+
			`"MQSIDECAR_DEDUP_PATH=orders-redis/path": MQSIDECAR_DEDUP_PATH is set by the injector itself`,
		`mqsidecar.io/secret-env-from: "Orders_Env" is not a valid Secret name (want SECRET[,SECRET...])`,
		`mqsidecar.io/secret-volumes: "redis-tls" is listed twice`,
		`mqsidecar.io/secret-volume: unknown annotation (did you mean mqsidecar.io/secret-volumes?)`,
	),
	"pod-deployment-static-membership-true": deniedWith(
		`mqsidecar.io/kafka-static-membership: "true" needs a stable pod name, but this pod's name is not stable: ` +
			`it is created by ReplicaSet orders-6d5f8c7b9, whose replacement pods get new names.`,
	),
	"pod-statefulset-identity-off": func(t *testing.T, r result) {
		c, _ := sidecar(t, injectedPod(t, r))
		noEnv(t, c, "MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID")
		noEnv(t, c, "MQSIDECAR_SOURCE_ROCKETMQ_INSTANCE_NAME")
	},
	"pod-bare-named-static-membership-true": func(t *testing.T, r result) {
		c, _ := sidecar(t, injectedPod(t, r))
		wantEnv(t, c, "MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID", "$(POD_NAME)")
		wantEnv(t, c, "MQSIDECAR_SOURCE_ROCKETMQ_INSTANCE_NAME", "$(POD_NAME)")
	},
}

func TestWebhookGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.in.json")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	seen := map[string]bool{}
	reg := prometheus.NewRegistry()
	h := newTestHandler(t, reg)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.json")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			check, ok := caseChecks[name]
			if !ok {
				t.Fatalf("fixture %s has no entry in caseChecks", in)
			}
			body, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			out := post(t, h, body)
			golden := strings.TrimSuffix(in, ".in.json") + ".out.json"
			compareGolden(t, golden, readableResponse(t, out))

			var reqReview, respReview admissionv1.AdmissionReview
			mustUnmarshal(t, body, &reqReview)
			mustUnmarshal(t, out, &respReview)
			if respReview.APIVersion != "admission.k8s.io/v1" || respReview.Kind != "AdmissionReview" {
				t.Errorf("response type = %s/%s", respReview.APIVersion, respReview.Kind)
			}
			if respReview.Response == nil || respReview.Response.UID != reqReview.Request.UID {
				t.Fatalf("response must echo the request uid %s: %+v", reqReview.Request.UID, respReview.Response)
			}
			r := result{req: reqReview.Request, resp: respReview.Response, before: reqReview.Request.Object.Raw, after: reqReview.Request.Object.Raw}
			if len(r.resp.Patch) > 0 {
				if r.resp.PatchType == nil || *r.resp.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Fatalf("patchType = %v, want JSONPatch", r.resp.PatchType)
				}
				if r.after, err = applyPatch(r.before, r.resp.Patch); err != nil {
					t.Fatalf("applying the patch: %v\npatch: %s", err, r.resp.Patch)
				}
			}
			check(t, r)
		})
	}
	for name := range caseChecks {
		if !seen[name] {
			t.Errorf("caseChecks has %q but testdata/%s.in.json does not exist", name, name)
		}
	}
	// Metrics: every fixture counted once, by kind and result.
	if got := counterSum(t, reg, "mqsidecar_injector_admissions_total", map[string]string{"kind": "Pod", "result": "injected"}); got != 10 {
		t.Errorf("injected pods counted = %v, want 10", got)
	}
	if got := counterSum(t, reg, "mqsidecar_injector_admissions_total", map[string]string{"kind": "Pod", "result": "denied"}); got != 9 {
		t.Errorf("denied pods counted = %v, want 9", got)
	}
}

// TestInjectionIsIdempotent feeds every mutated pod back: the second review must not patch.
func TestInjectionIsIdempotent(t *testing.T) {
	h := newTestHandler(t, nil)
	for _, name := range []string{"pod-native-default", "pod-container-mode-all-annotations", "pod-statefulset-with-dedup-pvc"} {
		body, err := os.ReadFile("testdata/" + name + ".in.json")
		if err != nil {
			t.Fatal(err)
		}
		first := decodeResponse(t, post(t, h, body))
		var review admissionv1.AdmissionReview
		mustUnmarshal(t, body, &review)
		mutated, err := applyPatch(review.Request.Object.Raw, first.Patch)
		if err != nil {
			t.Fatal(err)
		}
		review.Request.Object.Raw = mutated
		again, _ := json.Marshal(review)
		second := decodeResponse(t, post(t, h, again))
		if !second.Allowed || len(second.Patch) != 0 {
			t.Errorf("%s: second review patched again: %s", name, second.Patch)
		}
		// Also when only the container survived (status annotation stripped by someone).
		var pod map[string]any
		mustUnmarshal(t, mutated, &pod)
		delete(pod["metadata"].(map[string]any)["annotations"].(map[string]any), AnnotationStatus)
		review.Request.Object.Raw, _ = json.Marshal(pod)
		again, _ = json.Marshal(review)
		if third := decodeResponse(t, post(t, h, again)); !third.Allowed || len(third.Patch) != 0 {
			t.Errorf("%s: a pod with the sidecar container but no status annotation was patched: %s", name, third.Patch)
		}
	}
}

func TestHandlerRejectsBadRequests(t *testing.T) {
	h := newTestHandler(t, nil)
	valid, err := os.ReadFile("testdata/pod-native-default.in.json")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, method, ctype, body string
		want                      int
	}{
		{"get", http.MethodGet, "application/json", "", http.StatusMethodNotAllowed},
		{"content type", http.MethodPost, "text/plain", string(valid), http.StatusUnsupportedMediaType},
		{"not json", http.MethodPost, "application/json", "{", http.StatusBadRequest},
		{"no request", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest},
		{"v1beta1", http.MethodPost, "application/json", strings.Replace(string(valid), "admission.k8s.io/v1", "admission.k8s.io/v1beta1", 1), http.StatusBadRequest},
		{"too large", http.MethodPost, "application/json", `{"x":"` + strings.Repeat("a", maxReviewBytes) + `"}`, http.StatusRequestEntityTooLarge},
		{"valid", http.MethodPost, "application/json; charset=utf-8", string(valid), http.StatusOK},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(c.method, "/mutate", strings.NewReader(c.body))
		req.Header.Set("Content-Type", c.ctype)
		h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("%s: status %d, want %d (%s)", c.name, rec.Code, c.want, rec.Body)
		}
	}
}

// TestUndecodablePodIsAllowed: an object we cannot read is our problem, never a denial.
func TestUndecodablePodIsAllowed(t *testing.T) {
	h := newTestHandler(t, nil)
	body := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1",
		"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
		"operation":"CREATE","userInfo":{},"object":{"metadata":{"annotations":{"mqsidecar.io/inject":"true"}},"spec":{"containers":"not a list"}}}}`)
	resp := decodeResponse(t, post(t, h, body))
	if !resp.Allowed || len(resp.Patch) != 0 || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "could not decode") {
		t.Errorf("response = %+v", resp)
	}
}

func TestNewValidatesOptions(t *testing.T) {
	bad := []func(*Options){
		func(o *Options) { o.Image = "" },
		func(o *Options) { o.Mode = "sideways" },
		func(o *Options) { o.ImagePullPolicy = "Sometimes" },
		func(o *Options) { o.AdminPort = 70000 },
		func(o *Options) { o.MinTerminationGracePeriod = -time.Second },
		func(o *Options) { o.Resources.Limits[corev1.ResourceMemory] = resource.MustParse("1Mi") },
		func(o *Options) { o.SecretEnv = "MQSIDECAR_DEDUP_REDIS_PASSWORD" },
		func(o *Options) { o.SecretEnvFrom = "not/a/name" },
		func(o *Options) { o.SecretVolumes = "tls,tls" },
	}
	for i, mutate := range bad {
		o := testOptions()
		mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("case %d: New accepted invalid options %+v", i, o)
		}
	}
	if _, err := New(testOptions()); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
}

// --- helpers ---

func post(t *testing.T, h http.Handler, body []byte) []byte {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("response Content-Type = %q", ct)
	}
	return rec.Body.Bytes()
}

func decodeResponse(t *testing.T, out []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	var r admissionv1.AdmissionReview
	mustUnmarshal(t, out, &r)
	if r.Response == nil {
		t.Fatalf("no response in %s", out)
	}
	return r.Response
}

// readableResponse renders a response for the golden file, with the base64 patch decoded
// into JSON so that diffs of the golden files are reviewable.
func readableResponse(t *testing.T, out []byte) []byte {
	t.Helper()
	var m map[string]any
	mustUnmarshal(t, out, &m)
	if resp, ok := m["response"].(map[string]any); ok {
		if p, ok := resp["patch"].(string); ok {
			raw, err := base64.StdEncoding.DecodeString(p)
			if err != nil {
				t.Fatal(err)
			}
			var ops any
			mustUnmarshal(t, raw, &ops)
			resp["patch"] = ops
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./injector -run TestWebhookGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("response differs from %s (rerun with -update if intended):\n--- got\n%s", path, got)
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("unmarshal %T: %v", v, err)
	}
}

// strictDecode decodes JSON into v refusing unknown fields, as the API server would.
func strictDecode(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("strict decode %T: %v\n%s", v, err, b)
	}
}

// injectedPod asserts the review injected, decodes the patched pod, checks that it is
// well formed and that nothing of the original pod was lost, and returns it.
func injectedPod(t *testing.T, r result) *corev1.Pod {
	t.Helper()
	if !r.resp.Allowed || len(r.resp.Patch) == 0 {
		t.Fatalf("want an allowed review with a patch, got allowed=%v patch=%s result=%+v", r.resp.Allowed, r.resp.Patch, r.resp.Result)
	}
	var before, after corev1.Pod
	strictDecode(t, r.before, &before)
	strictDecode(t, r.after, &after)
	checkPodWellFormed(t, &after)

	if after.Annotations[AnnotationStatus] != "injected" {
		t.Errorf("status annotation = %q", after.Annotations[AnnotationStatus])
	}
	for k, v := range before.Annotations {
		if after.Annotations[k] != v {
			t.Errorf("annotation %s changed: %q → %q", k, v, after.Annotations[k])
		}
	}
	strip := func(cs []corev1.Container) []corev1.Container {
		return slices.DeleteFunc(slices.Clone(cs), func(c corev1.Container) bool { return c.Name == ContainerName })
	}
	if !reflect.DeepEqual(strip(after.Spec.Containers), before.Spec.Containers) && !(len(before.Spec.Containers) == 0) {
		t.Error("the application's containers were modified")
	}
	if !reflect.DeepEqual(strip(after.Spec.InitContainers), before.Spec.InitContainers) && len(before.Spec.InitContainers) > 0 {
		t.Error("the application's init containers were modified")
	}
	for _, v := range before.Spec.Volumes {
		if !reflect.DeepEqual(*volume(t, &after, v.Name), v) {
			t.Errorf("volume %s modified", v.Name)
		}
	}
	return &after
}

// checkPodWellFormed checks the invariants the API server would enforce on what we add.
func checkPodWellFormed(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	names := map[string]bool{}
	vols := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if vols[v.Name] {
			t.Errorf("duplicate volume %q", v.Name)
		}
		vols[v.Name] = true
	}
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if names[c.Name] {
			t.Errorf("duplicate container name %q", c.Name)
		}
		names[c.Name] = true
		ports := map[string]bool{}
		for _, p := range c.Ports {
			if p.Name != "" {
				if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
					t.Errorf("container %s: port name %q: %v", c.Name, p.Name, msgs)
				}
				ports[p.Name] = true
			}
		}
		for _, m := range c.VolumeMounts {
			if !vols[m.Name] {
				t.Errorf("container %s mounts missing volume %q", c.Name, m.Name)
			}
		}
		defined := map[string]bool{}
		for _, e := range c.Env {
			if msgs := validation.IsEnvVarName(e.Name); len(msgs) > 0 {
				t.Errorf("env %q: %v", e.Name, msgs)
			}
			for _, ref := range []string{"POD_NAME", "POD_NAMESPACE"} {
				if strings.Contains(e.Value, "$("+ref+")") && !defined[ref] {
					t.Errorf("env %s uses $(%s) before it is defined", e.Name, ref)
				}
			}
			defined[e.Name] = true
		}
		for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.StrVal != "" && !ports[p.HTTPGet.Port.StrVal] {
				t.Errorf("container %s: probe uses undefined port %q", c.Name, p.HTTPGet.Port.StrVal)
			}
		}
		if c.StartupProbe != nil && !slices.ContainsFunc(pod.Spec.InitContainers, func(ic corev1.Container) bool { return ic.Name == c.Name }) &&
			c.Name == ContainerName {
			t.Errorf("startup probe on a regular sidecar container is not expected")
		}
	}
}

func sidecar(t *testing.T, pod *corev1.Pod) (c corev1.Container, native bool) {
	t.Helper()
	var found []corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if c.Name == ContainerName {
			found, native = append(found, c), true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == ContainerName {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s container, found %d", ContainerName, len(found))
	}
	return found[0], native
}

func statefulSet(t *testing.T, r result) *appsv1.StatefulSet {
	t.Helper()
	if !r.resp.Allowed || len(r.resp.Patch) == 0 {
		t.Fatalf("want an allowed review with a patch, got %+v", r.resp)
	}
	var sts appsv1.StatefulSet
	strictDecode(t, r.after, &sts)
	return &sts
}

func volume(t *testing.T, pod *corev1.Pod, name string) *corev1.Volume {
	t.Helper()
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == name {
			return &pod.Spec.Volumes[i]
		}
	}
	t.Fatalf("no volume %q", name)
	return nil
}

func findEnv(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func wantEnv(t *testing.T, c corev1.Container, name, value string) {
	t.Helper()
	if e := findEnv(c, name); e == nil || e.Value != value {
		t.Errorf("env %s = %+v, want %q", name, e, value)
	}
}

func noEnv(t *testing.T, c corev1.Container, name string) {
	t.Helper()
	if e := findEnv(c, name); e != nil {
		t.Errorf("env %s must not be set, got %q", name, e.Value)
	}
}

func wantResources(t *testing.T, c corev1.Container, cpuReq, cpuLim, memReq, memLim string) {
	t.Helper()
	get := func(l corev1.ResourceList, n corev1.ResourceName) string {
		if q, ok := l[n]; ok {
			return q.String()
		}
		return ""
	}
	got := [4]string{get(c.Resources.Requests, "cpu"), get(c.Resources.Limits, "cpu"), get(c.Resources.Requests, "memory"), get(c.Resources.Limits, "memory")}
	if want := [4]string{cpuReq, cpuLim, memReq, memLim}; got != want {
		t.Errorf("resources (cpu req/lim, mem req/lim) = %q, want %q", got, want)
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// unchanged asserts an allowed response without a patch (and, if warning != "", one warning
// containing it).
func unchanged(warning string) func(t *testing.T, r result) {
	return func(t *testing.T, r result) {
		t.Helper()
		if !r.resp.Allowed || len(r.resp.Patch) != 0 || r.resp.PatchType != nil {
			t.Fatalf("want allowed without a patch, got allowed=%v patch=%s", r.resp.Allowed, r.resp.Patch)
		}
		if warning == "" && len(r.resp.Warnings) != 0 {
			t.Errorf("unexpected warnings %q", r.resp.Warnings)
		}
		if warning != "" && (len(r.resp.Warnings) != 1 || !strings.Contains(r.resp.Warnings[0], warning)) {
			t.Errorf("warnings = %q, want one containing %q", r.resp.Warnings, warning)
		}
	}
}

// deniedWith asserts a denial whose message contains every fragment.
func deniedWith(fragments ...string) func(t *testing.T, r result) {
	return func(t *testing.T, r result) {
		t.Helper()
		if r.resp.Allowed || len(r.resp.Patch) != 0 {
			t.Fatalf("want a denial, got allowed=%v patch=%s", r.resp.Allowed, r.resp.Patch)
		}
		if r.resp.Result == nil || r.resp.Result.Code != http.StatusUnprocessableEntity {
			t.Fatalf("denial status = %+v", r.resp.Result)
		}
		msg := r.resp.Result.Message
		for _, f := range fragments {
			if !strings.Contains(msg, f) {
				t.Errorf("denial message lacks %q:\n%s", f, msg)
			}
		}
		if got, want := strings.Count(msg, "\n"), len(fragments); got != want {
			t.Errorf("denial has %d problem lines, want %d:\n%s", got, want, msg)
		}
	}
}

func counterSum(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}
