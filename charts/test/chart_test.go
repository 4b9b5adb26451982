// Package charttest renders the Helm chart charts/mqsidecar with the helm binary and checks
// every rendered object: strictly decoded into its k8s.io/api type (unknown or miscased
// fields fail), or, for the cert-manager and Prometheus Operator kinds that have no
// k8s.io/api type, into a local mirror of the fields we use, also strictly. It also runs
// `helm lint --strict` and checks that values.schema.json refuses bad values.
//
// helm is found in $HELM, <repo>/.tools/bin/helm (installed by hack/helm.sh) or $PATH. When
// it is missing the tests skip; hack/test-k8s.sh, which `make test` runs, installs helm and
// runs these tests with HELM set, where a missing binary fails. TestAgainstAPIServer
// (apiserver_test.go) needs kube-apiserver and etcd, which hack/test-k8s.sh builds.
package charttest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqsidecar/mqsidecar/injector"
	"github.com/mqsidecar/mqsidecar/metrics"
)

const (
	chartDir    = "../mqsidecar"
	namespace   = "mqsidecar-system"
	release     = "mq"
	kubeVersion = "1.31.0"
	injName     = "mq-mqsidecar-injector"
	// injectorBinary is where the Dockerfile puts cmd/mqsidecar-injector.
	injectorBinary = "/usr/local/bin/mqsidecar-injector"
)

func helm(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		// Set by hack/test-k8s.sh after installing helm: it must work.
		if _, err := exec.LookPath(h); err != nil {
			t.Fatalf("HELM=%s: %v", h, err)
		}
		return h
	}
	if abs, err := filepath.Abs("../../.tools/bin/helm"); err == nil {
		if _, err := os.Stat(abs); err == nil {
			return abs
		}
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	// Not fatal even under CI: `go test ./...` may run before hack/test-k8s.sh has installed
	// helm, and hack/test-k8s.sh (part of `make test`) always runs these tests with HELM set.
	t.Skip("helm not found: run hack/test-k8s.sh (installs helm into .tools/bin and runs these tests) or set HELM")
	return ""
}

func runHelm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helm(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// rendered is one chart rendering, objects indexed by kind.
type rendered struct {
	kinds        []string
	saccounts    []corev1.ServiceAccount
	services     []corev1.Service
	secrets      []corev1.Secret
	configmaps   []corev1.ConfigMap
	deployments  []appsv1.Deployment
	pdbs         []policyv1.PodDisruptionBudget
	webhooks     []admissionregistrationv1.MutatingWebhookConfiguration
	issuers      []issuer
	certificates []certificate
	svcMonitors  []serviceMonitor
	podMonitors  []podMonitor
	rules        []prometheusRule // alerts_test.go
}

// Mirrors of the CRD fields the chart sets. Strict decoding into them catches typos; the
// required fields are checked in checkCRDs.
type (
	objectRef struct {
		Name  string `json:"name"`
		Kind  string `json:"kind"`
		Group string `json:"group"`
	}
	issuer struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			SelfSigned *struct{} `json:"selfSigned,omitempty"`
			CA         *struct {
				SecretName string `json:"secretName"`
			} `json:"ca,omitempty"`
		} `json:"spec"`
	}
	certificate struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			SecretName  string   `json:"secretName"`
			IsCA        bool     `json:"isCA"`
			CommonName  string   `json:"commonName"`
			Duration    string   `json:"duration"`
			RenewBefore string   `json:"renewBefore"`
			DNSNames    []string `json:"dnsNames"`
			Usages      []string `json:"usages"`
			PrivateKey  struct {
				Algorithm      string `json:"algorithm"`
				Size           int    `json:"size"`
				RotationPolicy string `json:"rotationPolicy"`
			} `json:"privateKey"`
			IssuerRef objectRef `json:"issuerRef"`
		} `json:"spec"`
	}
	endpoint struct {
		Port     string `json:"port"`
		Path     string `json:"path"`
		Scheme   string `json:"scheme"`
		Interval string `json:"interval"`
	}
	serviceMonitor struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			Selector          metav1.LabelSelector `json:"selector"`
			NamespaceSelector struct {
				MatchNames []string `json:"matchNames"`
			} `json:"namespaceSelector"`
			Endpoints []endpoint `json:"endpoints"`
		} `json:"spec"`
	}
	podMonitor struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			Selector          metav1.LabelSelector `json:"selector"`
			NamespaceSelector struct {
				Any bool `json:"any"`
			} `json:"namespaceSelector"`
			PodMetricsEndpoints []endpoint `json:"podMetricsEndpoints"`
		} `json:"spec"`
	}
)

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// render runs helm template with extra args and strictly decodes every object.
func render(t *testing.T, extra ...string) *rendered {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, extra...)
	out, err := runHelm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	r := &rendered{}
	for i, doc := range docSep.Split(string(out), -1) {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatalf("document %d is not YAML: %v\n%s", i, err, doc)
		}
		if string(js) == "null" {
			continue // only comments
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		gvk := tm.APIVersion + "/" + tm.Kind
		r.kinds = append(r.kinds, tm.Kind)
		switch gvk {
		case "v1/ServiceAccount":
			r.saccounts = append(r.saccounts, decode[corev1.ServiceAccount](t, gvk, js))
		case "v1/Service":
			r.services = append(r.services, decode[corev1.Service](t, gvk, js))
		case "v1/Secret":
			r.secrets = append(r.secrets, decode[corev1.Secret](t, gvk, js))
		case "v1/ConfigMap":
			r.configmaps = append(r.configmaps, decode[corev1.ConfigMap](t, gvk, js))
		case "apps/v1/Deployment":
			r.deployments = append(r.deployments, decode[appsv1.Deployment](t, gvk, js))
		case "policy/v1/PodDisruptionBudget":
			r.pdbs = append(r.pdbs, decode[policyv1.PodDisruptionBudget](t, gvk, js))
		case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
			r.webhooks = append(r.webhooks, decode[admissionregistrationv1.MutatingWebhookConfiguration](t, gvk, js))
		case "cert-manager.io/v1/Issuer":
			r.issuers = append(r.issuers, decode[issuer](t, gvk, js))
		case "cert-manager.io/v1/Certificate":
			r.certificates = append(r.certificates, decode[certificate](t, gvk, js))
		case "monitoring.coreos.com/v1/ServiceMonitor":
			r.svcMonitors = append(r.svcMonitors, decode[serviceMonitor](t, gvk, js))
		case "monitoring.coreos.com/v1/PodMonitor":
			r.podMonitors = append(r.podMonitors, decode[podMonitor](t, gvk, js))
		case "monitoring.coreos.com/v1/PrometheusRule":
			r.rules = append(r.rules, decode[prometheusRule](t, gvk, js))
		default:
			t.Fatalf("document %d: unexpected object %s (add it to the test)", i, gvk)
		}
	}
	sort.Strings(r.kinds)
	return r
}

// decode decodes js into T refusing unknown fields, then checks that every non-empty field
// of the input survives a round trip through T: encoding/json matches names case-insensitively,
// which the API server does not, so a miscased field would otherwise slip through.
func decode[T any](t *testing.T, gvk string, js []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: strict decode: %v\n%s", gvk, err, js)
	}
	back, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var orig, rt any
	_ = json.Unmarshal(js, &orig)
	_ = json.Unmarshal(back, &rt)
	if err := subset(orig, rt, ""); err != nil {
		t.Fatalf("%s: %v", gvk, err)
	}
	return v
}

func subset(orig, rt any, path string) error {
	switch o := orig.(type) {
	case map[string]any:
		r, _ := rt.(map[string]any)
		for k, v := range o {
			if empty(v) {
				continue
			}
			rv, ok := r[k]
			if !ok {
				return fmt.Errorf("field %s/%s is not a field of the type (miscased?)", path, k)
			}
			if err := subset(v, rv, path+"/"+k); err != nil {
				return err
			}
		}
	case []any:
		r, _ := rt.([]any)
		if len(r) != len(o) {
			return fmt.Errorf("%s: list length changed in a round trip", path)
		}
		for i := range o {
			if err := subset(o[i], r[i], fmt.Sprintf("%s/%d", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func empty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	case string:
		return x == ""
	case bool:
		return !x
	case float64:
		return x == 0
	}
	return false
}

func one[T any](t *testing.T, what string, xs []T) T {
	t.Helper()
	if len(xs) != 1 {
		t.Fatalf("want exactly one %s, got %d", what, len(xs))
	}
	return xs[0]
}

func TestDefaultValues(t *testing.T) {
	r := render(t)
	if want := []string{"ConfigMap", "Deployment", "MutatingWebhookConfiguration", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"}; !slices.Equal(r.kinds, want) {
		t.Fatalf("objects = %v, want %v (no RBAC: the injector never calls the API)", r.kinds, want)
	}
	sa := one(t, "ServiceAccount", r.saccounts)
	svc := one(t, "Service", r.services)
	dep := one(t, "Deployment", r.deployments)
	secret := one(t, "Secret", r.secrets)
	mwc := one(t, "MutatingWebhookConfiguration", r.webhooks)
	pdb := one(t, "PodDisruptionBudget", r.pdbs)

	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the ServiceAccount must not automount a token")
	}
	pod := dep.Spec.Template
	if pod.Spec.ServiceAccountName != sa.Name || pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Errorf("pod service account %q (automount %v), want %q without token", pod.Spec.ServiceAccountName, pod.Spec.AutomountServiceAccountToken, sa.Name)
	}
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas = %d, want 2", *dep.Spec.Replicas)
	}
	checkSelects(t, "Deployment selector", dep.Spec.Selector, pod.Labels)
	checkSelects(t, "PodDisruptionBudget selector", pdb.Spec.Selector, pod.Labels)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, pod.Labels)
	}
	c := one(t, "container", pod.Spec.Containers)
	checkInjectorContainer(t, c, pod, svc)

	args := flagMap(c.Args)
	for flag, want := range map[string]string{
		"--sidecar-image": "ghcr.io/mqsidecar/mqsidecar:0.1.0", "--sidecar-mode": "native",
		"--sidecar-memory-limit": "256Mi", "--sidecar-cpu-limit": "", "--admin-port": "9464",
		"--wait-for-ready": "false", "--min-termination-grace-period": "45s",
		"--sidecar-secret-env": "", "--sidecar-secret-env-from": "", "--sidecar-secret-volumes": "",
	} {
		if got, ok := args[flag]; !ok || got != want {
			t.Errorf("injector arg %s = %q, want %q", flag, got, want)
		}
	}
	if c.Image != "ghcr.io/mqsidecar/mqsidecar:0.1.0" {
		t.Errorf("image = %s, want the chart appVersion tag", c.Image)
	}

	// The TLS secret is the one mounted, and the webhook's CA bundle verifies its cert for
	// the Service DNS name the API server connects to.
	if secret.Type != corev1.SecretTypeTLS || secret.Name != mountedSecret(t, pod) {
		t.Errorf("secret %s (%s) is not the mounted TLS secret %s", secret.Name, secret.Type, mountedSecret(t, pod))
	}
	wh := checkWebhook(t, mwc, svc)
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("failurePolicy = %v, want Ignore by default", wh.FailurePolicy)
	}
	if *wh.TimeoutSeconds != 5 {
		t.Errorf("timeoutSeconds = %d", *wh.TimeoutSeconds)
	}
	if len(wh.ClientConfig.CABundle) == 0 {
		t.Fatal("caBundle is empty")
	}
	if !bytes.Equal(wh.ClientConfig.CABundle, secret.Data["ca.crt"]) {
		t.Error("caBundle differs from the Secret's ca.crt")
	}
	verifyServingCert(t, wh.ClientConfig.CABundle, secret.Data["tls.crt"], secret.Data["tls.key"], injName+"."+namespace+".svc")
	if len(wh.ObjectSelector.MatchLabels)+len(wh.ObjectSelector.MatchExpressions) != 0 {
		t.Errorf("default objectSelector must be empty, got %+v", wh.ObjectSelector)
	}

	checkDashboard(t, one(t, "ConfigMap", r.configmaps), namespace)
	checkArgsAcceptedByInjectCommand(t, c.Args, secret)
}

func TestFullValuesCertManagerAndMonitors(t *testing.T) {
	r := render(t, "-f", chartDir+"/ci/full-values.yaml")
	want := []string{"Certificate", "Certificate", "ConfigMap", "Deployment", "Issuer", "Issuer", "MutatingWebhookConfiguration",
		"PodMonitor", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"}
	if !slices.Equal(r.kinds, want) {
		t.Fatalf("objects = %v, want %v (no Secret: cert-manager writes it; no PDB with 1 replica)", r.kinds, want)
	}
	svc := one(t, "Service", r.services)
	dep := one(t, "Deployment", r.deployments)
	mwc := one(t, "MutatingWebhookConfiguration", r.webhooks)
	pod := dep.Spec.Template
	c := one(t, "container", pod.Spec.Containers)
	checkInjectorContainer(t, c, pod, svc)
	args := flagMap(c.Args)
	if args["--sidecar-mode"] != "container" || args["--sidecar-image"] != "registry.example.com/mqsidecar:1.2.3" ||
		args["--sidecar-cpu-limit"] != "1" || args["--log-level"] != "debug" {
		t.Errorf("args do not follow the values: %v", c.Args)
	}
	// sidecar.secrets: names of Secrets and keys only, in the injector's syntax (sorted env).
	for flag, want := range map[string]string{
		"--sidecar-secret-env":      "MQSIDECAR_DEDUP_REDIS_PASSWORD=mqsidecar-redis/password,MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD=kafka-credentials/password",
		"--sidecar-secret-env-from": "mqsidecar-env",
		"--sidecar-secret-volumes":  "kafka-tls,redis-tls",
	} {
		if got := args[flag]; got != want {
			t.Errorf("injector arg %s = %q, want %q", flag, got, want)
		}
	}
	// cert-manager writes the serving Secret at install time; borrow the default render's.
	checkArgsAcceptedByInjectCommand(t, c.Args, one(t, "Secret", render(t).secrets))
	if pod.Spec.NodeSelector["kubernetes.io/os"] != "linux" || len(pod.Spec.Tolerations) != 1 {
		t.Errorf("nodeSelector/tolerations not rendered: %v %v", pod.Spec.NodeSelector, pod.Spec.Tolerations)
	}

	// cert-manager: self-signed issuer → CA certificate → CA issuer → serving certificate
	// into the mounted secret; cainjector fills the webhook's caBundle.
	var serving, ca *certificate
	for i := range r.certificates {
		if r.certificates[i].Spec.IsCA {
			ca = &r.certificates[i]
		} else {
			serving = &r.certificates[i]
		}
	}
	if ca == nil || serving == nil {
		t.Fatal("want one CA and one serving Certificate")
	}
	issuers := map[string]issuer{}
	for _, is := range r.issuers {
		issuers[is.Metadata.Name] = is
		if is.Metadata.Namespace != namespace || (is.Spec.SelfSigned == nil) == (is.Spec.CA == nil) {
			t.Errorf("issuer %s: want exactly one of selfSigned/ca, namespace %s: %+v", is.Metadata.Name, namespace, is)
		}
	}
	if is, ok := issuers[ca.Spec.IssuerRef.Name]; !ok || is.Spec.SelfSigned == nil || ca.Spec.IssuerRef.Kind != "Issuer" {
		t.Errorf("CA certificate must be issued by the self-signed Issuer, issuerRef %+v", ca.Spec.IssuerRef)
	}
	if is, ok := issuers[serving.Spec.IssuerRef.Name]; !ok || is.Spec.CA == nil || is.Spec.CA.SecretName != ca.Spec.SecretName {
		t.Errorf("serving certificate must be issued by the CA Issuer backed by %s, issuerRef %+v", ca.Spec.SecretName, serving.Spec.IssuerRef)
	}
	for _, cert := range []*certificate{ca, serving} {
		if cert.Spec.SecretName == "" || cert.Spec.IssuerRef.Name == "" || cert.APIVersion != "cert-manager.io/v1" {
			t.Errorf("certificate %s lacks required fields: %+v", cert.Metadata.Name, cert.Spec)
		}
	}
	if serving.Spec.SecretName != mountedSecret(t, pod) {
		t.Errorf("serving certificate writes %s, the injector mounts %s", serving.Spec.SecretName, mountedSecret(t, pod))
	}
	if !slices.Contains(serving.Spec.DNSNames, injName+"."+namespace+".svc") || !slices.Contains(serving.Spec.Usages, "server auth") {
		t.Errorf("serving certificate dnsNames %v usages %v", serving.Spec.DNSNames, serving.Spec.Usages)
	}

	wh := checkWebhook(t, mwc, svc)
	if got, want := mwc.Annotations["cert-manager.io/inject-ca-from"], namespace+"/"+serving.Metadata.Name; got != want {
		t.Errorf("inject-ca-from = %q, want %q", got, want)
	}
	if len(wh.ClientConfig.CABundle) != 0 {
		t.Error("caBundle must be left to cert-manager's cainjector")
	}
	if *wh.FailurePolicy != admissionregistrationv1.Fail || *wh.TimeoutSeconds != 10 {
		t.Errorf("failurePolicy %v timeout %d", *wh.FailurePolicy, *wh.TimeoutSeconds)
	}
	if wh.NamespaceSelector.MatchLabels["mqsidecar.io/injection"] != "enabled" {
		t.Errorf("namespaceSelector matchLabels = %v", wh.NamespaceSelector.MatchLabels)
	}
	if len(wh.ObjectSelector.MatchExpressions) != 1 || wh.ObjectSelector.MatchExpressions[0].Key != "app" {
		t.Errorf("objectSelector = %+v", wh.ObjectSelector)
	}

	sm := one(t, "ServiceMonitor", r.svcMonitors)
	checkSelects(t, "ServiceMonitor selector", &sm.Spec.Selector, svc.Labels)
	if sm.Metadata.Labels["release"] != "kube-prometheus-stack" || !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
		t.Errorf("ServiceMonitor labels %v namespaceSelector %v", sm.Metadata.Labels, sm.Spec.NamespaceSelector)
	}
	ep := one(t, "ServiceMonitor endpoint", sm.Spec.Endpoints)
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) || ep.Path != "/metrics" || ep.Interval == "" {
		t.Errorf("ServiceMonitor endpoint %+v does not match a Service port", ep)
	}

	pm := one(t, "PodMonitor", r.podMonitors)
	injected := labels.Set{injector.LabelInjected: "true"}
	checkSelects(t, "PodMonitor selector", &pm.Spec.Selector, injected)
	if !pm.Spec.NamespaceSelector.Any {
		t.Error("PodMonitor must look in every namespace")
	}
	if pep := one(t, "PodMonitor endpoint", pm.Spec.PodMetricsEndpoints); pep.Port != injector.AdminPortName || pep.Path != "/metrics" {
		t.Errorf("PodMonitor endpoint %+v, want port %s (the injected sidecar's admin port)", pep, injector.AdminPortName)
	}

	cm := one(t, "ConfigMap", r.configmaps)
	if cm.Annotations["grafana_folder"] != "mqsidecar" {
		t.Errorf("dashboard annotations = %v", cm.Annotations)
	}
	checkDashboard(t, cm, "monitoring")
}

func TestExistingIssuer(t *testing.T) {
	r := render(t, "--set", "certManager.enabled=true", "--set", "certManager.issuerRef.name=corp-ca", "--set", "certManager.issuerRef.kind=ClusterIssuer")
	if len(r.issuers) != 0 {
		t.Errorf("no Issuer must be created when issuerRef is given, got %d", len(r.issuers))
	}
	cert := one(t, "Certificate", r.certificates)
	if cert.Spec.IssuerRef != (objectRef{Name: "corp-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}) {
		t.Errorf("issuerRef = %+v", cert.Spec.IssuerRef)
	}
}

func TestSidecarModeFollowsKubernetesVersion(t *testing.T) {
	for version, want := range map[string]string{"1.28.9": "container", "1.29.0": "native", "1.33.1": "native"} {
		out, err := runHelm(t, "template", release, chartDir, "--namespace", namespace, "--kube-version", version)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "--sidecar-mode="+want+"\n") {
			t.Errorf("Kubernetes %s: want --sidecar-mode=%s", version, want)
		}
	}
}

func TestSchemaRefusesBadValues(t *testing.T) {
	for _, set := range []string{
		"bogus=1",                                                    // unknown top-level key
		"webhook.failurePolicy=Sometimes",                            // not Ignore/Fail
		"webhook.timeoutSeconds=60",                                  // API server maximum is 30
		"sidecar.mode=sidecar",                                       // not auto/native/container
		"sidecar.resources.limits.cpu=lots",                          // not a quantity
		"sidecar.adminPort=0",                                        // not a port
		"injector.certCheckInterval=often",                           // not a duration
		"injector.resources.requests.gpu=1",                          // unknown resource key
		"metrics.serviceMonitor.enable=true",                         // typo
		"sidecar.secrets.env.MQSIDECAR_DEDUP_REDIS_PASSWORD=hunter2", // a value, not secret/key
		"sidecar.secrets.env.1BAD=kafka/password",                    // not a variable name
		"sidecar.secrets.volumes={Redis_TLS}",                        // not a Secret name
		"sidecar.secrets.envFrom={env,env}",                          // twice
		"sidecar.secrets.password=x",                                 // unknown key
		"alerts.parkedMinutes=0",                                     // at least 1
		"alerts.noAcksFor=soon",                                      // not a Prometheus duration
		"alerts.storeCommitSeconds=0",                                // must be positive
	} {
		_, err := runHelm(t, "template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion, "--set", set)
		if err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("--set %s: want a schema error, got %v", set, err)
		}
	}
	if _, err := runHelm(t, "template", release, chartDir, "--kube-version", kubeVersion, "--set", "global.imageRegistry=x"); err != nil {
		t.Errorf("global values (from a parent chart) must be accepted: %v", err)
	}
}

func TestLintStrict(t *testing.T) {
	for _, extra := range [][]string{nil, {"-f", chartDir + "/ci/full-values.yaml"}} {
		args := append([]string{"lint", "--strict", chartDir, "--kube-version", kubeVersion}, extra...)
		if out, err := runHelm(t, args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

// --- checks ---

func checkSelects(t *testing.T, what string, sel *metav1.LabelSelector, set map[string]string) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() || !s.Matches(labels.Set(set)) {
		t.Errorf("%s %v does not select %v (err %v)", what, sel, set, err)
	}
}

func checkInjectorContainer(t *testing.T, c corev1.Container, pod corev1.PodTemplateSpec, svc corev1.Service) {
	t.Helper()
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, sp := range svc.Spec.Ports {
		if _, ok := ports[sp.TargetPort.StrVal]; !ok {
			t.Errorf("Service port %s targets %q, which the container does not have", sp.Name, sp.TargetPort.StrVal)
		}
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || ports[p.HTTPGet.Port.StrVal] == 0 {
			t.Errorf("probe %+v must use a named container port", p)
		}
	}
	// The image's entrypoint is the sidecar: the container must run the injector binary,
	// which the Dockerfile must ship at that path, and pass it flags only.
	if !slices.Equal(c.Command, []string{injectorBinary}) {
		t.Errorf("command = %q, want [%s]", c.Command, injectorBinary)
	}
	checkImageShips(t, injectorBinary)
	for _, a := range c.Args {
		if !strings.HasPrefix(a, "--") {
			t.Errorf("injector args must be flags only (the binary has no inject subcommand), got %q in %q", a, c.Args)
		}
	}
	sc, psc := c.SecurityContext, pod.Spec.SecurityContext
	if sc == nil || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || psc == nil || !*psc.RunAsNonRoot {
		t.Errorf("injector must run non-root, read-only, without privilege escalation: %+v %+v", sc, psc)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("injector resources = %+v", c.Resources)
	}
	flags := flagMap(c.Args)
	mount := ""
	for _, m := range c.VolumeMounts {
		if m.Name == "tls" {
			mount = m.MountPath
		}
	}
	if mount == "" || flags["--tls-cert-file"] != mount+"/tls.crt" || flags["--tls-key-file"] != mount+"/tls.key" {
		t.Errorf("TLS files %s %s are not in the TLS mount %q", flags["--tls-cert-file"], flags["--tls-key-file"], mount)
	}
}

func mountedSecret(t *testing.T, pod corev1.PodTemplateSpec) string {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if v.Name == "tls" && v.Secret != nil {
			return v.Secret.SecretName
		}
	}
	t.Fatal("no tls secret volume")
	return ""
}

func checkWebhook(t *testing.T, mwc admissionregistrationv1.MutatingWebhookConfiguration, svc corev1.Service) admissionregistrationv1.MutatingWebhook {
	t.Helper()
	wh := one(t, "webhook", mwc.Webhooks)
	if wh.Name != "inject.mqsidecar.io" || !slices.Equal(wh.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("webhook %s versions %v", wh.Name, wh.AdmissionReviewVersions)
	}
	if wh.SideEffects == nil || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("sideEffects = %v, want None", wh.SideEffects)
	}
	s := wh.ClientConfig.Service
	if s == nil || s.Name != svc.Name || s.Namespace != namespace || s.Path == nil || *s.Path != "/mutate" || s.Port == nil {
		t.Fatalf("clientConfig.service = %+v", s)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == *s.Port && p.TargetPort.StrVal == "webhook" }) {
		t.Errorf("the webhook calls port %d, which the Service does not route to the webhook port", *s.Port)
	}
	var pods, sts bool
	for _, r := range wh.Rules {
		if !slices.Equal(r.Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) {
			t.Errorf("rule %+v must only match CREATE", r)
		}
		pods = pods || (slices.Equal(r.APIGroups, []string{""}) && slices.Equal(r.Resources, []string{"pods"}))
		sts = sts || (slices.Equal(r.APIGroups, []string{"apps"}) && slices.Equal(r.Resources, []string{"statefulsets"}))
	}
	if !pods || !sts {
		t.Errorf("rules %+v must cover pods and statefulsets", wh.Rules)
	}
	ns, err := metav1.LabelSelectorAsSelector(wh.NamespaceSelector)
	if err != nil {
		t.Fatal(err)
	}
	for _, excluded := range []string{namespace, "kube-system"} {
		if ns.Matches(labels.Set{"kubernetes.io/metadata.name": excluded, "mqsidecar.io/injection": "enabled"}) {
			t.Errorf("namespaceSelector must exclude %s", excluded)
		}
	}
	if !ns.Matches(labels.Set{"kubernetes.io/metadata.name": "shop", "mqsidecar.io/injection": "enabled"}) {
		t.Error("namespaceSelector must select an ordinary namespace")
	}
	return wh
}

func verifyServingCert(t *testing.T, caPEM, certPEM, keyPEM []byte, dnsName string) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("caBundle holds no PEM certificate")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("tls.crt/tls.key: %v", err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: dnsName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("serving certificate does not verify for %s against the caBundle: %v", dnsName, err)
	}
	_ = pair
}

// briefMetrics are the sidecar metrics the dashboard was specified with; every one must be
// shown. The dashboard must also show everything else the sidecar exports (exportedMetrics).
var briefMetrics = []string{
	"mqsidecar_messages_received_total", "mqsidecar_deliveries_total", "mqsidecar_messages_acked_total",
	"mqsidecar_messages_retried_total", "mqsidecar_messages_deduplicated_total", "mqsidecar_messages_dead_lettered_total",
	"mqsidecar_messages_dropped_total", "mqsidecar_push_duration_seconds", "mqsidecar_inflight_messages",
	"mqsidecar_consumer_lag", "mqsidecar_parked_lanes", "mqsidecar_source_ready", "mqsidecar_app_ready",
	"mqsidecar_dedup_commit_duration_seconds",
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// exportedMetrics lists the metrics the sidecar really exports, read from package metrics:
// name → true for histograms. (Vectors without children are absent from Gather, so the
// collectors are described instead.)
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	out := map[string]bool{}
	v := reflect.ValueOf(m).Elem()
	histogram := reflect.TypeFor[prometheus.Histogram]()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || v.Type().Field(i).Name == "Registry" {
			continue
		}
		ch := make(chan *prometheus.Desc, 8)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			if n := fqName.FindStringSubmatch(d.String()); n != nil && strings.HasPrefix(n[1], "mqsidecar_") {
				out[n[1]] = v.Type().Field(i).Type == histogram
			}
		}
	}
	for _, b := range briefMetrics {
		if _, ok := out[b]; !ok {
			t.Errorf("package metrics does not export %s", b)
		}
	}
	return out
}

var metricRef = regexp.MustCompile(`mqsidecar_[a-z_]+`)

func checkDashboard(t *testing.T, cm corev1.ConfigMap, wantNamespace string) {
	t.Helper()
	if cm.Labels["grafana_dashboard"] != "1" || cm.Namespace != wantNamespace {
		t.Errorf("dashboard ConfigMap %s/%s labels %v: want label grafana_dashboard=1 in %s", cm.Namespace, cm.Name, cm.Labels, wantNamespace)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(cm.Data["mqsidecar.json"]), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	exported := exportedMetrics(t)
	used := map[string]bool{}
	titles := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		titles[p.Title] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, `namespace=~"$namespace"`) || !strings.Contains(tg.Expr, `pod=~"$pod"`) {
				t.Errorf("panel %q query ignores the namespace/pod variables: %s", p.Title, tg.Expr)
			}
			for _, m := range metricRef.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(m, "_bucket")
				isHistogram, ok := exported[base]
				if !ok {
					t.Errorf("panel %q uses %s, which the sidecar does not export", p.Title, m)
				}
				used[base] = true
				if isHistogram != strings.HasSuffix(m, "_bucket") {
					t.Errorf("panel %q: %s: histograms (and only they) are queried through _bucket", p.Title, m)
				}
			}
		}
	}
	for m := range exported {
		if !used[m] {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}
	for _, title := range []string{"Throughput", "Push results by kind", "Retries", "Dedup hits", "Dead letters and drops", "In flight", "Consumer lag by topic", "Push latency", "Parked lanes", "Errors by kind"} {
		if !titles[title] {
			t.Errorf("dashboard lacks the %q panel", title)
		}
	}
	for _, v := range []string{"datasource", "namespace", "pod"} {
		if !slices.ContainsFunc(dash.Templating.List, func(x struct {
			Name string `json:"name"`
		}) bool {
			return x.Name == v
		}) {
			t.Errorf("dashboard lacks the $%s variable", v)
		}
	}
}

// checkImageShips checks that the Dockerfile's final image copies a file to path.
func checkImageShips(t *testing.T, path string) {
	t.Helper()
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := strings.Split(string(df), "\nFROM ")
	final := stages[len(stages)-1]
	if !regexp.MustCompile(`(?m)^COPY --from=build \S+ ` + regexp.QuoteMeta(path) + `$`).MatchString(final) {
		t.Errorf("the Dockerfile's final image does not COPY a binary to %s", path)
	}
}

// checkArgsAcceptedByInjectCommand runs the real injector command (the root command of
// cmd/mqsidecar-injector) with the rendered args (TLS files from the rendered Secret,
// loopback listeners, an already-cancelled context): every flag must exist and every value
// must validate, so the chart and the binary agree.
func checkArgsAcceptedByInjectCommand(t *testing.T, args []string, secret corev1.Secret) {
	t.Helper()
	cmdArgs := localInjectorArgs(t, t.TempDir(), args, secret, "127.0.0.1:0")
	cmd := injector.NewCommand()
	cmd.SetArgs(cmdArgs)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Errorf("the injector command refuses the chart's args %q: %v", cmdArgs, err)
	}
}

// localInjectorArgs turns the chart's injector args into ones that run here: the chart
// Secret's key pair written to dir, the webhook on listen, metrics on a free loopback port,
// no shutdown delay, errors-only logs.
func localInjectorArgs(t *testing.T, dir string, chartArgs []string, secret corev1.Secret, listen string) []string {
	t.Helper()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, secret.Data["tls.crt"], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, secret.Data["tls.key"], 0o600); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range chartArgs {
		switch name, _, _ := strings.Cut(a, "="); name {
		case "--tls-cert-file":
			a = name + "=" + certFile
		case "--tls-key-file":
			a = name + "=" + keyFile
		case "--listen":
			a = name + "=" + listen
		case "--metrics-listen":
			a = name + "=127.0.0.1:0"
		case "--shutdown-delay":
			a = name + "=0s"
		case "--log-level":
			a = name + "=error"
		}
		args = append(args, a)
	}
	return args
}

func flagMap(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			m[k] = v
		}
	}
	return m
}

// TestNotesRender renders NOTES.txt, which `helm template` never prints: a copy of the chart
// carries it under another name, so template errors in it fail here and not at install time.
func TestNotesRender(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mqsidecar")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	// helm parses rendered templates as YAML: wrap the notes into a define and a JSON string.
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"_notes.tpl":          `{{- define "test.notes" -}}` + string(notes) + `{{- end -}}`,
		"notes-rendered.yaml": `notes: {{ include "test.notes" . | toJson }}` + "\n",
		"NOTES.txt":           "",
	} {
		if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"namespace " + namespace, "Sidecar mode: native (auto, Kubernetes v" + kubeVersion + ")",
			"Failure policy: Ignore - while no injector replica answers, pods are created WITHOUT the sidecar.",
			"logs deploy/" + injName, "metrics.podMonitor.enabled=true", "mqsidecar.io/secret-env:",
			"on by default for StatefulSet\n   pods only"}},
		{[]string{"--set", "webhook.failurePolicy=Fail", "--set", "metrics.podMonitor.enabled=true", "--set", "sidecar.mode=container"},
			[]string{"Failure policy: Fail\n", "Sidecar mode: container\n"}},
		{[]string{"--set", "sidecar.secrets.env.MQSIDECAR_DEDUP_REDIS_PASSWORD=orders-redis/password", "--set", "sidecar.secrets.volumes={redis-tls,kafka-tls}"},
			[]string{"(sidecar.secrets.env): MQSIDECAR_DEDUP_REDIS_PASSWORD=orders-redis/password\n",
				"(sidecar.secrets.volumes): redis-tls, kafka-tls\n", "must exist in every namespace"}},
	} {
		args := append([]string{"template", release, dir, "--namespace", namespace, "--kube-version", kubeVersion,
			"--show-only", "templates/notes-rendered.yaml"}, c.args...)
		raw, err := runHelm(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Notes string `json:"notes"`
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil || doc.Notes == "" {
			t.Fatalf("rendered notes: %v\n%s", err, raw)
		}
		out := doc.Notes
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("NOTES (%v) lacks %q:\n%s", c.args, w, out)
			}
		}
		if strings.Contains(out, "podMonitor") == slices.Contains(c.args, "metrics.podMonitor.enabled=true") {
			t.Errorf("NOTES (%v): the PodMonitor hint must appear exactly when it is disabled", c.args)
		}
		if strings.Contains(out, "Default Secrets of every sidecar") != slices.ContainsFunc(c.args, func(a string) bool { return strings.HasPrefix(a, "sidecar.secrets.") }) {
			t.Errorf("NOTES (%v): the default Secrets must be listed exactly when there are some", c.args)
		}
	}
}
