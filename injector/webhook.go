package injector

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxReviewBytes bounds the request body. The API server caps objects at ~1.5 MiB and an
// AdmissionReview carries at most two copies (object, oldObject) plus metadata.
const maxReviewBytes = 7 << 20

// Metrics are the injector's Prometheus metrics.
type Metrics struct {
	admissions   *prometheus.CounterVec
	certReloads  *prometheus.CounterVec
	certNotAfter prometheus.Gauge
}

// NewMetrics creates the injector metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqsidecar_injector_admissions_total",
			Help: "Admission reviews answered, by object kind and result (injected, skipped, denied, error).",
		}, []string{"kind", "result"}),
		certReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqsidecar_injector_certificate_reloads_total",
			Help: "Reloads of the serving certificate after its files changed, by result (success, failure).",
		}, []string{"result"}),
		certNotAfter: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqsidecar_injector_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the serving certificate in use, as a Unix timestamp.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.admissions, m.certReloads, m.certNotAfter)
	}
	return m
}

// Handler is the http.Handler of the webhook endpoint (the chart routes /mutate to it).
// It is safe for concurrent use.
type Handler struct {
	inj     *Injector
	log     *slog.Logger
	metrics *Metrics
}

// NewHandler returns the webhook handler. log and metrics may be nil.
func NewHandler(inj *Injector, log *slog.Logger, metrics *Metrics) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Handler{inj: inj, log: log, metrics: metrics}
}

// ServeHTTP answers one AdmissionReview. Malformed requests get 4xx; a panic gets 500. The
// API server treats both as a failed call and applies the webhook's failurePolicy.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("admission review panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			h.metrics.admissions.WithLabelValues("unknown", resultError).Inc()
			http.Error(w, "internal error", http.StatusInternalServerError)
		}
	}()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "only POST is allowed", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > maxReviewBytes {
		http.Error(w, "AdmissionReview too large", http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "decoding AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	want := admissionv1.SchemeGroupVersion.WithKind("AdmissionReview")
	if review.GroupVersionKind() != want || review.Request == nil {
		http.Error(w, fmt.Sprintf("expected an %s/%s with a request (admissionReviewVersions: [v1])",
			want.GroupVersion(), want.Kind), http.StatusBadRequest)
		return
	}

	resp := h.review(review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: want.GroupVersion().String(), Kind: want.Kind},
		Response: resp,
	})
	if err != nil {
		h.log.Error("encoding AdmissionReview response", "err", err)
		http.Error(w, "encoding response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

var (
	podKind         = metav1.GroupVersionKind{Group: "", Version: "v1", Kind: "Pod"}
	statefulSetKind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "StatefulSet"}
)

// review decides one request. It never denies for a reason that is not the object owner's.
func (h *Handler) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allowed := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Operation != admissionv1.Create || req.SubResource != "" {
		return allowed
	}
	log := h.log.With("uid", string(req.UID), "namespace", req.Namespace, "kind", req.Kind.Kind, "name", req.Name)

	var o outcome
	switch req.Kind {
	case podKind:
		var pod corev1.Pod
		if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
			return h.undecodable(log, req, err)
		}
		o = h.inj.MutatePod(&pod)
		log = log.With("generate_name", pod.GenerateName)
	case statefulSetKind:
		var sts appsv1.StatefulSet
		if err := json.Unmarshal(req.Object.Raw, &sts); err != nil {
			return h.undecodable(log, req, err)
		}
		o = h.inj.MutateStatefulSet(&sts)
	default:
		return allowed
	}
	h.metrics.admissions.WithLabelValues(req.Kind.Kind, o.result).Inc()

	switch o.result {
	case resultDenied:
		log.Warn("refused an object that asked for injection", "reason", o.denial)
		return &admissionv1.AdmissionResponse{
			Allowed: false,
			Result: &metav1.Status{
				Status:  metav1.StatusFailure,
				Message: o.denial,
				Reason:  metav1.StatusReasonInvalid,
				Code:    http.StatusUnprocessableEntity,
			},
		}
	case resultInjected:
		patch, err := json.Marshal(o.patch)
		if err != nil { // cannot happen with our value types; still never deny for it
			log.Error("encoding JSON patch", "err", err)
			allowed.Warnings = []string{"mqsidecar: internal error, sidecar not injected: " + err.Error()}
			return allowed
		}
		log.Info("injected", "dry_run", req.DryRun != nil && *req.DryRun, "warnings", len(o.warnings))
		pt := admissionv1.PatchTypeJSONPatch
		return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt, Warnings: o.warnings}
	default:
		log.Debug("not injecting", "warnings", len(o.warnings))
		allowed.Warnings = o.warnings
		return allowed
	}
}

// undecodable allows an object we could not read: that is our problem, not its owner's.
func (h *Handler) undecodable(log *slog.Logger, req *admissionv1.AdmissionRequest, err error) *admissionv1.AdmissionResponse {
	log.Error("decoding admitted object; allowing it unchanged", "err", err)
	h.metrics.admissions.WithLabelValues(req.Kind.Kind, resultError).Inc()
	return &admissionv1.AdmissionResponse{
		Allowed:  true,
		Warnings: []string{fmt.Sprintf("mqsidecar: could not decode the %s, sidecar not injected: %v", req.Kind.Kind, err)},
	}
}
