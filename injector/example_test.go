package injector

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
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

// example is one file of charts/mqsidecar/examples: the sidecar's ConfigMap and one workload.
type example struct {
	cm       corev1.ConfigMap
	replicas int32
	kind     string // Deployment or StatefulSet
	name     string
	template corev1.PodTemplateSpec
	sts      *appsv1.StatefulSet
}

func readExample(t *testing.T, path string) example {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ex example
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		mustUnmarshal(t, js, &tm)
		switch tm.Kind {
		case "ConfigMap":
			strictDecode(t, js, &ex.cm)
		case "Deployment":
			var dep appsv1.Deployment
			strictDecode(t, js, &dep)
			ex.kind, ex.name, ex.replicas, ex.template = tm.Kind, dep.Name, ptrOr(dep.Spec.Replicas, 1), dep.Spec.Template
		case "StatefulSet":
			var sts appsv1.StatefulSet
			strictDecode(t, js, &sts)
			ex.kind, ex.name, ex.replicas, ex.template, ex.sts = tm.Kind, sts.Name, ptrOr(sts.Spec.Replicas, 1), sts.Spec.Template, &sts
		default:
			t.Fatalf("unexpected kind %q in the example (a Secret? secret values never belong in an example)", tm.Kind)
		}
	}
	if ex.cm.Name == "" || ex.kind == "" {
		t.Fatalf("%s: want a ConfigMap and a Deployment or StatefulSet", path)
	}
	return ex
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// pod is the first pod its controller would create from the example's template: for a
// Deployment through a ReplicaSet with generateName, for a StatefulSet named <set>-0 with
// the volumes of its volumeClaimTemplates (as mutated by the webhook). It returns the pod
// as admitted and the name the pod gets (the downward API's metadata.name).
func (ex example) pod(t *testing.T, h *Handler) (corev1.Pod, string) {
	t.Helper()
	yes := true
	pod := corev1.Pod{ObjectMeta: *ex.template.ObjectMeta.DeepCopy(), Spec: *ex.template.Spec.DeepCopy()}
	pod.Namespace = ex.cm.Namespace
	switch ex.kind {
	case "Deployment":
		rs := ex.name + "-7d9c8b6f5"
		pod.GenerateName = rs + "-"
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs, UID: "rs", Controller: &yes}}
		return pod, rs + "-x2kqz"
	default:
		// The StatefulSet is reviewed when it is created; its claim templates become volumes.
		stsJSON, _ := json.Marshal(ex.sts)
		review, _ := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: "example-sts", Kind: statefulSetKind, Resource: metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"},
				Namespace: ex.cm.Namespace, Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: stsJSON},
			},
		})
		resp := decodeResponse(t, post(t, h, review))
		if !resp.Allowed {
			t.Fatalf("the StatefulSet is refused: %+v", resp.Result)
		}
		sts := *ex.sts
		if len(resp.Patch) > 0 {
			mutated, err := applyPatch(stsJSON, resp.Patch)
			if err != nil {
				t.Fatal(err)
			}
			sts = appsv1.StatefulSet{}
			strictDecode(t, mutated, &sts)
		}
		name := ex.name + "-0"
		pod = corev1.Pod{ObjectMeta: *sts.Spec.Template.ObjectMeta.DeepCopy(), Spec: *sts.Spec.Template.Spec.DeepCopy()}
		pod.Name, pod.GenerateName, pod.Namespace = name, ex.name+"-", ex.cm.Namespace
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: ex.name, UID: "sts", Controller: &yes}}
		for _, c := range sts.Spec.VolumeClaimTemplates {
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: c.Name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c.Name + "-" + name},
			}})
		}
		return pod, name
	}
}

// TestExamplesConfigLoad runs every example workload of the chart through the webhook and
// loads what the injected sidecar would load — the ConfigMap's file, the injected
// environment, the mounted Secrets — with the real config loader. It proves that every
// MQSIDECAR_* variable the injector sets is a valid key, that the documented examples are
// valid configurations, and that they follow the rules the README gives: no secret in a
// ConfigMap, a fleet of replicas on the shared dedup store, static membership exactly for
// StatefulSets.
func TestExamplesConfigLoad(t *testing.T) {
	paths, err := filepath.Glob("../charts/mqsidecar/examples/*.yaml")
	if err != nil || len(paths) < 2 {
		t.Fatalf("examples: %v %v", paths, err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			checkExample(t, readExample(t, path))
		})
	}
}

func checkExample(t *testing.T, ex example) {
	h := newTestHandler(t, nil)
	pod, podName := ex.pod(t, h)
	resp, injected := reviewPod(t, h, pod)
	if !resp.Allowed || injected == nil {
		t.Fatalf("example not injected: %+v", resp.Result)
	}
	c, native := sidecar(t, injected)
	if !native || c.StartupProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("want a native sidecar whose startup probe does not wait for the app")
	}

	// The file the sidecar reads: the ConfigMap key the volume maps to config.yaml.
	cmVol := volume(t, injected, ConfigVolume).ConfigMap
	if cmVol.Name != ex.cm.Name {
		t.Fatalf("the pod mounts ConfigMap %q, the example defines %q", cmVol.Name, ex.cm.Name)
	}
	file, ok := ex.cm.Data[cmVol.Items[0].Key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q", ex.cm.Name, cmVol.Items[0].Key)
	}
	var tree map[string]any
	if err := yaml.Unmarshal([]byte(file), &tree); err != nil {
		t.Fatal(err)
	}
	for _, p := range secretsIn(tree, "") {
		t.Errorf("the ConfigMap holds a secret at %s: it belongs in a Secret (mqsidecar.io/secret-env)", p)
	}
	store, _ := lookup(tree, "dedup.store").(string)
	if ex.replicas > 1 && store != "redis" {
		t.Errorf("%d replicas with dedup.store %q: a fleet wants the shared store (dedup.store: redis)", ex.replicas, store)
	}

	// The environment the kubelet would give the container; a Secret key reads as
	// "secret:<name>/<key>".
	env := map[string]string{}
	fromSecret := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = podName
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			v = injected.Namespace
		case e.ValueFrom.SecretKeyRef != nil:
			v = "secret:" + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
			fromSecret[e.Name] = v
		default:
			t.Fatalf("env %s: unexpected source %+v", e.Name, e.ValueFrom)
		}
		for name, val := range env {
			v = strings.ReplaceAll(v, "$("+name+")", val)
		}
		env[e.Name] = v
	}
	if store == "redis" && lookup(tree, "dedup.redis.password_file") == nil && fromSecret["MQSIDECAR_DEDUP_REDIS_PASSWORD"] == "" {
		t.Error("dedup.store redis without MQSIDECAR_DEDUP_REDIS_PASSWORD from a Secret (or dedup.redis.password_file)")
	}
	if _, static := env["MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID"]; static != (ex.kind == "StatefulSet") {
		t.Errorf("%s: Kafka static membership %v, want it exactly for StatefulSets", ex.kind, static)
	}

	// The mounted Secrets: every file the configuration names under SecretsDir must be in a
	// Secret the sidecar mounts. They are created in a directory standing in for SecretsDir.
	secretsDir := t.TempDir()
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(m.Name, SecretVolumePrefix) {
			mounted[strings.TrimPrefix(m.MountPath, SecretsDir+"/")] = true
		}
	}
	for _, ref := range regexp.MustCompile(regexp.QuoteMeta(SecretsDir)+`/([^/\s]+)/([^\s"']+)`).FindAllStringSubmatch(file, -1) {
		if !mounted[ref[1]] {
			t.Errorf("the configuration reads %s, but the sidecar mounts no Secret %q (mqsidecar.io/secret-volumes)", ref[0], ref[1])
			continue
		}
		p := filepath.Join(secretsDir, ref[1], ref[2])
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("from the Secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file = strings.ReplaceAll(file, SecretsDir+"/", secretsDir+"/")

	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatalf("the sidecar would refuse its configuration:\n%v", err)
	}

	checks := map[string]string{
		"app.url":                       "http://127.0.0.1:8080/messages",
		"app.health_url":                "http://127.0.0.1:8080/healthz",
		"dedup.path":                    DataDir + "/dedup.db",
		"admin.listen":                  "0.0.0.0:9464",
		"source.rocketmq.instance_name": podName,
	}
	if ex.kind == "StatefulSet" {
		checks["source.kafka.group_instance_id"] = podName
	} else {
		checks["source.kafka.group_instance_id"] = ""
	}
	// Every variable from a Secret key reaches its configuration key.
	for _, key := range config.Keys() {
		if v, ok := fromSecret[config.EnvVar(key)]; ok {
			checks[key] = v
			delete(fromSecret, config.EnvVar(key))
		}
	}
	for name := range fromSecret {
		t.Errorf("%s from a Secret matches no configuration key", name)
	}
	if store != "" {
		checks["dedup.store"] = store
	}
	for key, want := range checks {
		got, err := configValue(cfg, key)
		if err != nil {
			t.Errorf("%s: %v", key, err)
		} else if got != want {
			t.Errorf("loaded %s = %q, want %q", key, got, want)
		}
	}
}

// configValue returns the value of a leaf key of cfg as a string, found by the mapstructure
// tags as the config package finds it (so this test compiles before a key exists). A
// config.Secret gives its real value.
func configValue(cfg config.Config, key string) (string, error) {
	v := reflect.ValueOf(cfg)
	for part := range strings.SplitSeq(key, ".") {
		found := false
		for i := range v.NumField() {
			if tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("mapstructure"), ","); tag == part {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return "", fmt.Errorf("no such configuration key")
		}
	}
	if v.Kind() == reflect.String {
		return v.String(), nil // not fmt: a config.Secret would print "<redacted>"
	}
	return fmt.Sprint(v.Interface()), nil
}

// lookup returns the value at a dotted key of a parsed YAML file, nil if absent.
func lookup(tree map[string]any, key string) any {
	var cur any = tree
	for part := range strings.SplitSeq(key, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

// secretsIn returns the dotted keys of a parsed configuration file that hold a secret value:
// a password or secret key, or a URL with a password.
func secretsIn(tree map[string]any, prefix string) []string {
	var out []string
	for k, v := range tree {
		key := strings.TrimPrefix(prefix+"."+k, ".")
		switch v := v.(type) {
		case map[string]any:
			out = append(out, secretsIn(v, key)...)
		case string:
			if v == "" {
				continue
			}
			if k == "password" || k == "secret_key" {
				out = append(out, key)
			}
			if u, err := url.Parse(v); err == nil && u.User != nil {
				if _, hasPassword := u.User.Password(); hasPassword {
					out = append(out, key)
				}
			}
		}
	}
	return out
}
