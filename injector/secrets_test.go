package injector

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// reviewPod sends pod through h as a CREATE AdmissionReview and returns the response and,
// when there is a patch, the patched pod (strictly decoded).
func reviewPod(t *testing.T, h *Handler, pod corev1.Pod) (*admissionv1.AdmissionResponse, *corev1.Pod) {
	t.Helper()
	pod.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	podJSON, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	review, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "test", Kind: podKind, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: pod.Namespace, Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: podJSON},
		},
	})
	resp := decodeResponse(t, post(t, h, review))
	if len(resp.Patch) == 0 {
		return resp, nil
	}
	mutated, err := applyPatch(podJSON, resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	var out corev1.Pod
	strictDecode(t, mutated, &out)
	checkPodWellFormed(t, &out)
	return resp, &out
}

func annotatedPod(extra map[string]string) corev1.Pod {
	ann := map[string]string{AnnotationInject: "true", AnnotationConfig: "orders-mqsidecar"}
	for k, v := range extra {
		ann[k] = v
	}
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "orders-", Namespace: "shop", Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "orders", Image: "orders:1"}}},
	}
}

// secretsOf summarises the sidecar's Secret references as "env NAME=secret/key",
// "envFrom secret" and "volume secret@path" lines, sorted.
func secretsOf(t *testing.T, pod *corev1.Pod) []string {
	t.Helper()
	c, _ := sidecar(t, pod)
	var out []string
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			out = append(out, "env "+e.Name+"="+e.ValueFrom.SecretKeyRef.Name+"/"+e.ValueFrom.SecretKeyRef.Key)
		}
	}
	for _, e := range c.EnvFrom {
		out = append(out, "envFrom "+e.SecretRef.Name)
	}
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(m.Name, SecretVolumePrefix) {
			out = append(out, "volume "+volume(t, pod, m.Name).Secret.SecretName+"@"+m.MountPath)
		}
	}
	slices.Sort(out)
	return out
}

// TestSecretDefaults: the injector's defaults (the chart's sidecar.secrets) reach every
// sidecar, and each annotation replaces the default of its kind only; "" removes it.
func TestSecretDefaults(t *testing.T) {
	opts := testOptions()
	opts.SecretEnv = "MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD=kafka-credentials/password"
	opts.SecretEnvFrom = "mqsidecar-env"
	opts.SecretVolumes = "kafka-tls"
	inj, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandler(inj, nil, nil)
	defaults := []string{
		"env MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD=kafka-credentials/password",
		"envFrom mqsidecar-env",
		"volume kafka-tls@" + SecretsDir + "/kafka-tls",
	}
	for _, c := range []struct {
		name string
		ann  map[string]string
		want []string
	}{
		{"defaults", nil, defaults},
		{"env replaced", map[string]string{AnnotationSecretEnv: "MQSIDECAR_DEDUP_REDIS_PASSWORD=orders-redis/password"}, []string{
			"env MQSIDECAR_DEDUP_REDIS_PASSWORD=orders-redis/password", defaults[1], defaults[2]}},
		{"env removed", map[string]string{AnnotationSecretEnv: ""}, defaults[1:]},
		{"envFrom replaced", map[string]string{AnnotationSecretEnvFrom: "a, b"}, []string{defaults[0], "envFrom a", "envFrom b", defaults[2]}},
		{"volumes replaced", map[string]string{AnnotationSecretVolumes: "redis-tls"}, []string{
			defaults[0], defaults[1], "volume redis-tls@" + SecretsDir + "/redis-tls"}},
		{"all removed", map[string]string{AnnotationSecretEnv: " ", AnnotationSecretEnvFrom: "", AnnotationSecretVolumes: ","}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, pod := reviewPod(t, h, annotatedPod(c.ann))
			if pod == nil {
				t.Fatalf("not injected: %+v", resp.Result)
			}
			if got := secretsOf(t, pod); !slices.Equal(got, c.want) {
				t.Errorf("secret references = %q, want %q", got, c.want)
			}
		})
	}
}

// TestSecretVolumeNameTaken: the pod's own volume of an injected Secret volume's name is a
// denial naming it, never a pod with two volumes of one name.
func TestSecretVolumeNameTaken(t *testing.T) {
	pod := annotatedPod(map[string]string{AnnotationSecretVolumes: "kafka-tls,redis-tls"})
	pod.Spec.Volumes = []corev1.Volume{{Name: SecretVolumePrefix + "1", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	resp, _ := reviewPod(t, newTestHandler(t, nil), pod)
	if resp.Allowed || resp.Result == nil || !strings.Contains(resp.Result.Message, `already has a volume named "mqsidecar-secret-1"`) {
		t.Errorf("want a denial naming the volume, got allowed=%v %+v", resp.Allowed, resp.Result)
	}
}

func TestParseSecretEnv(t *testing.T) {
	env, err := parseSecretEnv(" A=s/k ,\n\tB_2=my.secret/tls.key,")
	if err != nil || !slices.Equal(env, []secretEnv{{"A", "s", "k"}, {"B_2", "my.secret", "tls.key"}}) {
		t.Errorf("parse = %+v, %v", env, err)
	}
	for in, want := range map[string]string{
		"A":             `"A" is not NAME=SECRET/KEY`,
		"A=s":           `"A=s" is not NAME=SECRET/KEY`,
		"=s/k":          `"=s/k" is not NAME=SECRET/KEY`,
		"A=s/":          `"A=s/" is not NAME=SECRET/KEY`,
		"1A=s/k":        `"1A" is not a valid environment variable name`,
		"A=S/k":         `"S" is not a valid Secret name`,
		"A=s/k/x":       `"k/x" is not a valid Secret key`,
		"A=s/k,A=t/k":   `A is set twice`,
		"POD_NAME=s/k":  `POD_NAME is set by the injector itself`,
		"A=s/k, B=s k/": `"B=s k/" is not NAME=SECRET/KEY`,
	} {
		if _, err := parseSecretEnv(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", in, err, want)
		}
	}
}
