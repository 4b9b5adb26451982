package charttest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mqsidecar/mqsidecar/injector"
)

// TestAgainstAPIServer runs a real kube-apiserver and etcd on loopback, installs what the
// chart renders (its Secret, Service and MutatingWebhookConfiguration, unchanged: the CA
// bundle and serving certificate are the chart's own), runs the injector command with the
// chart's Deployment args, and creates pods, a Deployment, a StatefulSet and the
// StatefulSet's pod through the API; it asserts what the API server stored. There is no
// controller-manager or kubelet: the pods a ReplicaSet or the StatefulSet controller would
// create are created by the test with the owner references those controllers set.
//
// The API server reaches the webhook through the chart's Service: --enable-aggregator-routing
// makes it resolve Services through their endpoints (no kube-proxy needed), and the
// endpoints the test writes point at a non-loopback address of this machine (Kubernetes
// refuses loopback endpoints), where the injector listens.
//
// kube-apiserver and etcd are built from the Go module proxy by hack/kube-bins.sh;
// hack/test-k8s.sh (make test) sets MQSIDECAR_KUBE_BIN_DIR to them. Without it the test
// skips.
func TestAgainstAPIServer(t *testing.T) {
	bins := os.Getenv("MQSIDECAR_KUBE_BIN_DIR")
	if bins == "" {
		t.Skip("MQSIDECAR_KUBE_BIN_DIR is not set: hack/test-k8s.sh builds kube-apiserver and etcd and runs this test")
	}
	hostIP := nonLoopbackIPv4(t)
	r := render(t)
	secret := one(t, "Secret", r.secrets)
	svc := one(t, "Service", r.services)
	mwc := one(t, "MutatingWebhookConfiguration", r.webhooks)
	dep := one(t, "Deployment", r.deployments)
	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	must(t, os.MkdirAll(logs, 0o755))
	defer func() {
		if t.Failed() {
			for _, name := range []string{"etcd.log", "kube-apiserver.log"} {
				b, _ := os.ReadFile(filepath.Join(logs, name))
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("--- tail of %s:\n%s", name, b)
			}
		}
	}()

	// etcd.
	etcdClient, etcdPeer := freePort(t, "127.0.0.1"), freePort(t, "127.0.0.1")
	startProcess(t, filepath.Join(logs, "etcd.log"), filepath.Join(bins, "etcd"),
		"--name=test", "--data-dir="+filepath.Join(dir, "etcd"), "--unsafe-no-fsync",
		"--listen-client-urls=http://127.0.0.1:"+etcdClient, "--advertise-client-urls=http://127.0.0.1:"+etcdClient,
		"--listen-peer-urls=http://127.0.0.1:"+etcdPeer, "--initial-advertise-peer-urls=http://127.0.0.1:"+etcdPeer,
		"--initial-cluster=test=http://127.0.0.1:"+etcdPeer, "--log-level=warn")

	// kube-apiserver, with a CA and serving certificate made here, a service-account key and
	// a static admin token.
	ca := newCA(t)
	apiCert, apiKey := ca.issue(t, "kube-apiserver", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	saKey := pemKey(t, newKey(t))
	const token = "mqsidecar-test-token"
	files := map[string][]byte{
		"ca.crt": ca.certPEM, "apiserver.crt": apiCert, "apiserver.key": apiKey, "sa.key": saKey,
		"tokens.csv": []byte(token + ",admin,admin-uid,system:masters\n"),
	}
	for name, b := range files {
		must(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
	apiPort := freePort(t, "127.0.0.1")
	startProcess(t, filepath.Join(logs, "kube-apiserver.log"), filepath.Join(bins, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:"+etcdClient,
		"--bind-address=127.0.0.1", "--secure-port="+apiPort, "--advertise-address="+hostIP,
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+filepath.Join(dir, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(dir, "apiserver.key"),
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"), "--authorization-mode=AlwaysAllow",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(dir, "sa.key"), "--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none",
		// Services resolve to their endpoints: no kube-proxy here.
		"--enable-aggregator-routing=true",
		// No controller-manager creates the namespaces' default ServiceAccount.
		"--disable-admission-plugins=ServiceAccount")
	api := &apiClient{t: t, base: "https://127.0.0.1:" + apiPort, token: token, http: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool(t), MinVersion: tls.VersionTLS12}},
	}}
	api.waitReady(90 * time.Second)

	// The injector, run as the chart's Deployment runs it, with the chart's key pair.
	webhookPort := freePort(t, hostIP)
	stopInjector := runInjector(t, dir, dep.Spec.Template.Spec.Containers[0].Args, secret, net.JoinHostPort(hostIP, webhookPort))
	defer stopInjector()

	// The chart's objects, as rendered, plus the endpoints a Service controller would write.
	api.create("/api/v1/namespaces", corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, nil)
	api.create("/api/v1/namespaces/"+namespace+"/secrets", secret, nil)
	api.create("/api/v1/namespaces/"+namespace+"/services", svc, nil)
	port, _ := strconv.Atoi(webhookPort)
	api.create("/api/v1/namespaces/"+namespace+"/endpoints", corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: hostIP}},
			Ports:     []corev1.EndpointPort{{Name: "webhook", Port: int32(port), Protocol: corev1.ProtocolTCP}},
		}},
	}, nil)
	api.create("/apis/discovery.k8s.io/v1/namespaces/"+namespace+"/endpointslices", discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc.Name + "-test", Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{hostIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("webhook"), Port: ptr(int32(port)), Protocol: ptr(corev1.ProtocolTCP)}},
	}, nil)
	api.create("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", mwc, nil)

	// The application namespace, labelled as the webhook's namespaceSelector wants.
	wh := one(t, "webhook", mwc.Webhooks)
	api.create("/api/v1/namespaces", corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: wh.NamespaceSelector.MatchLabels}}, nil)

	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "orders"}, Annotations: map[string]string{
			injector.AnnotationInject: "true", injector.AnnotationConfig: "orders-mqsidecar",
			injector.AnnotationAppPort: "8080", injector.AnnotationAppPath: "/messages",
		}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "orders", Image: "example.com/orders:1"}}},
	}
	podFrom := func(tmpl corev1.PodTemplateSpec, meta metav1.ObjectMeta) corev1.Pod {
		meta.Labels, meta.Annotations = tmpl.Labels, tmpl.Annotations
		return corev1.Pod{ObjectMeta: meta, Spec: *tmpl.Spec.DeepCopy()}
	}

	// The webhook configuration reaches the API server's informers within a moment; with the
	// chart's failurePolicy Ignore a pod created before would simply not be injected. Dry-run
	// creates (sideEffects: None allows them) until one is mutated.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got corev1.Pod
		api.create("/api/v1/namespaces/shop/pods?dryRun=All", podFrom(template, metav1.ObjectMeta{Name: "probe"}), &got)
		if len(got.Spec.InitContainers) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no dry-run pod was mutated within 60s: the API server does not call the webhook")
		}
		time.Sleep(500 * time.Millisecond)
	}

	t.Run("deployment pod", func(t *testing.T) {
		api := api.with(t)
		var d appsv1.Deployment
		api.create("/apis/apps/v1/namespaces/shop/deployments", appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "orders"},
			Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: template.Labels}, Template: template},
		}, &d)
		if len(d.Spec.Template.Spec.InitContainers) != 0 || d.Spec.Template.Annotations[injector.AnnotationStatus] != "" {
			t.Errorf("the Deployment's template itself must not be mutated (its pods are): %+v", d.Spec.Template)
		}
		// The pod its ReplicaSet would create: generated name, the ReplicaSet as controller.
		var pod corev1.Pod
		api.create("/api/v1/namespaces/shop/pods", podFrom(d.Spec.Template, metav1.ObjectMeta{
			GenerateName: "orders-6d5f8c7b9-",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "orders-6d5f8c7b9",
				UID: "0b5b6c7e-0000-4000-8000-000000000001", Controller: ptr(true), BlockOwnerDeletion: ptr(true)}},
		}), &pod)
		stored := api.getPod("shop", pod.Name)
		c := storedSidecar(t, stored, true)
		if c.StartupProbe == nil || c.StartupProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("startup probe = %+v, want /healthz", c.StartupProbe)
		}
		if env := envOf(c); env["MQSIDECAR_APP_URL"] != "http://127.0.0.1:8080/messages" || env["MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID"] != "" {
			t.Errorf("sidecar env = %v: want the app URL and no static membership (generated pod name)", env)
		}
		if v := storedVolume(t, stored, injector.DedupVolume); v.EmptyDir == nil {
			t.Errorf("dedup volume = %+v, want an emptyDir", v.VolumeSource)
		}
		if g := stored.Spec.TerminationGracePeriodSeconds; g == nil || *g < 45 {
			t.Errorf("terminationGracePeriodSeconds = %v, want at least 45", g)
		}
	})

	t.Run("unannotated pod", func(t *testing.T) {
		api := api.with(t)
		api.create("/api/v1/namespaces/shop/pods", corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "plain", Labels: map[string]string{"app": "plain"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "plain", Image: "example.com/plain:1"}}},
		}, nil)
		stored := api.getPod("shop", "plain")
		if len(stored.Spec.InitContainers) != 0 || len(stored.Spec.Containers) != 1 || len(stored.Spec.Volumes) != 0 ||
			stored.Labels[injector.LabelInjected] != "" || stored.Annotations[injector.AnnotationStatus] != "" {
			t.Errorf("an unannotated pod was changed: %+v", stored)
		}
	})

	t.Run("statefulset and its pod", func(t *testing.T) {
		api := api.with(t)
		tmpl := *template.DeepCopy()
		tmpl.Labels = map[string]string{"app": "ledger"}
		var sts appsv1.StatefulSet
		api.create("/apis/apps/v1/namespaces/shop/statefulsets", appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: "ledger"},
			Spec:       appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels}, ServiceName: "ledger", Template: tmpl},
		}, &sts)
		if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Name != injector.DedupVolume {
			t.Fatalf("stored volumeClaimTemplates = %+v, want %s", sts.Spec.VolumeClaimTemplates, injector.DedupVolume)
		}
		if sc := sts.Spec.Template.Spec.SecurityContext; sc == nil || sc.FSGroup == nil || *sc.FSGroup != injector.NonRootUID {
			t.Errorf("stored fsGroup = %+v, want %d", sc, injector.NonRootUID)
		}
		// Pod ledger-0 as the StatefulSet controller creates it: the claim's volume added,
		// the StatefulSet as controller.
		pod := podFrom(sts.Spec.Template, metav1.ObjectMeta{
			Name: "ledger-0", GenerateName: "ledger-",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "ledger",
				UID: sts.UID, Controller: ptr(true), BlockOwnerDeletion: ptr(true)}},
		})
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: injector.DedupVolume, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: injector.DedupVolume + "-ledger-0"}}})
		api.create("/api/v1/namespaces/shop/pods", pod, nil)
		stored := api.getPod("shop", "ledger-0")
		c := storedSidecar(t, stored, true)
		if env := envOf(c); env["MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID"] != "$(POD_NAME)" {
			t.Errorf("sidecar env = %v, want static membership (stable pod name)", env)
		}
		if v := storedVolume(t, stored, injector.DedupVolume); v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "mqsidecar-dedup-ledger-0" {
			t.Errorf("dedup volume = %+v, want the StatefulSet's claim", v.VolumeSource)
		}
	})

	t.Run("refusals reach the client", func(t *testing.T) {
		api := api.with(t)
		for name, extra := range map[string]map[string]string{
			"typo": {"mqsidecar.io/app-prot": "8080"},
			"gate": {injector.AnnotationWaitForReady: "true", injector.AnnotationAppHealthPath: "/healthz"},
		} {
			tmpl := *template.DeepCopy()
			for k, v := range extra {
				tmpl.Annotations[k] = v
			}
			status, body := api.do(http.MethodPost, "/api/v1/namespaces/shop/pods", podFrom(tmpl, metav1.ObjectMeta{Name: "refused-" + name}))
			want := map[string]string{"typo": "did you mean mqsidecar.io/app-port?", "gate": "the pod would never start"}[name]
			if status < 400 || !strings.Contains(string(body), want) {
				t.Errorf("%s: status %d, body %s; want a refusal containing %q", name, status, body, want)
			}
			if status, _ := api.do(http.MethodGet, "/api/v1/namespaces/shop/pods/refused-"+name, nil); status != http.StatusNotFound {
				t.Errorf("%s: the refused pod was stored (GET status %d)", name, status)
			}
		}
	})
}

func storedSidecar(t *testing.T, pod corev1.Pod, native bool) corev1.Container {
	t.Helper()
	list := pod.Spec.Containers
	if native {
		list = pod.Spec.InitContainers
	}
	i := slices.IndexFunc(list, func(c corev1.Container) bool { return c.Name == injector.ContainerName })
	if i < 0 {
		t.Fatalf("stored pod %s has no %s container (native %v): %+v", pod.Name, injector.ContainerName, native, pod.Spec)
	}
	c := list[i]
	if native && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
		t.Errorf("stored sidecar restartPolicy = %v, want Always", c.RestartPolicy)
	}
	if pod.Labels[injector.LabelInjected] != "true" || pod.Annotations[injector.AnnotationStatus] != "injected" {
		t.Errorf("stored pod labels %v annotations %v, want the injected marks", pod.Labels, pod.Annotations)
	}
	return c
}

func storedVolume(t *testing.T, pod corev1.Pod, name string) corev1.Volume {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("stored pod %s has no volume %s", pod.Name, name)
	return corev1.Volume{}
}

func envOf(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}

func ptr[T any](v T) *T { return &v }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// nonLoopbackIPv4 is an address of this machine the API server can reach and Kubernetes
// accepts in endpoints.
func nonLoopbackIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	must(t, err)
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	t.Fatalf("no non-loopback IPv4 address on this machine (%v): Kubernetes refuses loopback endpoints, so the API server cannot reach the webhook through its Service", addrs)
	return ""
}

func freePort(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	must(t, err)
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// startProcess starts a server process logging to logFile and stops it (SIGTERM, then
// SIGKILL) when the test ends.
func startProcess(t *testing.T, logFile, bin string, args ...string) {
	t.Helper()
	f, err := os.Create(logFile)
	must(t, err)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		f.Close()
	})
}

// runInjector runs the injector command with the chart's args, serving on listen with the
// chart's key pair, until the returned function is called.
func runInjector(t *testing.T, dir string, chartArgs []string, secret corev1.Secret, listen string) func() {
	t.Helper()
	args := localInjectorArgs(t, dir, chartArgs, secret, listen)
	cmd := injector.NewCommand()
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- cmd.ExecuteContext(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("the injector command stopped: %v (args %q)", err, args)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the injector does not listen on %s", listen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("injector: %v", err)
		}
	}
}

// apiClient is a minimal REST client for the API server (no client-go in this module).
type apiClient struct {
	t     *testing.T
	base  string
	token string
	http  *http.Client
}

func (a *apiClient) with(t *testing.T) *apiClient { c := *a; c.t = t; return &c }

func (a *apiClient) do(method, path string, body any) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		must(a.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	must(a.t, err)
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(a.t, err)
	return resp.StatusCode, b
}

// create POSTs obj to path, fails the test unless it was created, and decodes the stored
// object into out (if not nil).
func (a *apiClient) create(path string, obj, out any) {
	a.t.Helper()
	status, body := a.do(http.MethodPost, path, obj)
	if status != http.StatusCreated && status != http.StatusOK {
		a.t.Fatalf("POST %s: status %d: %s", path, status, body)
	}
	if out != nil {
		must(a.t, json.Unmarshal(body, out))
	}
}

func (a *apiClient) getPod(ns, name string) corev1.Pod {
	a.t.Helper()
	status, body := a.do(http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/"+name, nil)
	if status != http.StatusOK {
		a.t.Fatalf("GET pod %s/%s: status %d: %s", ns, name, status, body)
	}
	var p corev1.Pod
	must(a.t, json.Unmarshal(body, &p))
	return p
}

func (a *apiClient) waitReady(timeout time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequest(http.MethodGet, a.base+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+a.token)
		resp, err := a.http.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("kube-apiserver not ready after %s: %v", timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// testCA is a throwaway certificate authority.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	return k
}

func pemKey(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mqsidecar test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	cert, err := x509.ParseCertificate(der)
	must(t, err)
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) issue(t *testing.T, cn string, dns []string, ips []net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: dns, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pemKey(t, key)
}

func (ca *testCA) pool(t *testing.T) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(ca.certPEM) {
		t.Fatal("CA PEM")
	}
	return p
}
