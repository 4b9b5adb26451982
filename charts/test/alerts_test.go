package charttest

import (
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// prometheusRule mirrors the fields of the Prometheus Operator's PrometheusRule the chart sets.
type prometheusRule struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// wantAlerts are the alerts the chart promises (values.yaml, alerts).
var wantAlerts = []string{
	"MqsidecarConsumerLagGrowing", "MqsidecarQueueLagGrowing", "MqsidecarQueueBacklogGrowing", "MqsidecarNoAcknowledgements", "MqsidecarDeadLetters", "MqsidecarParkedTooLong",
	"MqsidecarStoreCommitSlow", "MqsidecarBrokerNotReady", "MqsidecarAppNotReady", "MqsidecarBrokerDurabilityAtRisk",
}

// TestAlerts: off by default; on, one PrometheusRule whose alerts are the promised ones, each
// querying only metrics the sidecar exports (histograms through _bucket), with a severity,
// the values' alert labels and thresholds, a summary and a description.
func TestAlerts(t *testing.T) {
	if r := render(t); len(r.rules) != 0 {
		t.Fatalf("a PrometheusRule with the default values: %v", r.kinds)
	}
	r := render(t, "-f", chartDir+"/ci/full-values.yaml")
	rule := one(t, "PrometheusRule", r.rules)
	if rule.Metadata.Namespace != "monitoring" || rule.Metadata.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule %s/%s labels %v: want namespace monitoring and label release=kube-prometheus-stack", rule.Metadata.Namespace, rule.Metadata.Name, rule.Metadata.Labels)
	}
	exported := exportedMetrics(t)
	var names []string
	for _, g := range rule.Spec.Groups {
		for _, a := range g.Rules {
			names = append(names, a.Alert)
			refs := metricRef.FindAllString(a.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("%s: expr %q names no mqsidecar metric", a.Alert, a.Expr)
			}
			for _, m := range refs {
				base := strings.TrimSuffix(m, "_bucket")
				isHistogram, ok := exported[base]
				if !ok {
					t.Errorf("%s uses %s, which the sidecar does not export", a.Alert, m)
				} else if isHistogram != strings.HasSuffix(m, "_bucket") {
					t.Errorf("%s: %s: histograms (and only they) are queried through _bucket", a.Alert, m)
				}
			}
			if strings.Count(a.Expr, "(") != strings.Count(a.Expr, ")") {
				t.Errorf("%s: unbalanced parentheses in %q", a.Alert, a.Expr)
			}
			if s := a.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q", a.Alert, s)
			}
			if a.Labels["team"] != "payments" {
				t.Errorf("%s: labels %v lack alerts.alertLabels (team: payments)", a.Alert, a.Labels)
			}
			if a.Annotations["summary"] == "" || a.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description: %v", a.Alert, a.Annotations)
			}
			if strings.Contains(a.Expr, "{{") || strings.Contains(a.Expr, "<no value>") {
				t.Errorf("%s: template left in expr %q", a.Alert, a.Expr)
			}
		}
	}
	slices.Sort(names)
	want := slices.Clone(wantAlerts)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("alerts %v, want %v", names, want)
	}
	for _, g := range rule.Spec.Groups {
		for _, a := range g.Rules {
			if a.Alert == "MqsidecarParkedTooLong" && !strings.HasSuffix(a.Expr, "> 300") {
				t.Errorf("MqsidecarParkedTooLong: expr %q, want the threshold alerts.parkedMinutes=5 as > 300 (seconds)", a.Expr)
			}
			if a.Alert == "MqsidecarNoAcknowledgements" && a.For != "10m" {
				t.Errorf("MqsidecarNoAcknowledgements: for %q, want alerts.noAcksFor's default 10m", a.For)
			}
		}
	}
}
