package injector

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Secrets reach the sidecar only as Kubernetes references — env valueFrom.secretKeyRef,
// envFrom.secretRef and secret volumes — which the kubelet resolves when it starts the
// container. The injector never sees a secret value, and none is ever written into the
// ConfigMap with the configuration file or into an annotation.

const (
	// SecretsDir is where the Secrets of AnnotationSecretVolumes are mounted, one directory
	// per Secret: SecretsDir/<secret>/<key>. It is not under ConfigDir, whose ConfigMap
	// volume is read-only and cannot hold the mount points.
	SecretsDir = "/etc/mqsidecar-secrets"
	// SecretVolumePrefix names the injected Secret volumes: mqsidecar-secret-0, -1, ...
	SecretVolumePrefix = "mqsidecar-secret-"
)

// secretEnv is one environment variable taken from a Secret key.
type secretEnv struct {
	name, secret, key string
}

// secretRefs are the Secrets given to the sidecar: the injector's defaults, or a pod's
// annotations, which replace them kind by kind.
type secretRefs struct {
	env     []secretEnv
	envFrom []string // Secret names
	volumes []string // Secret names, mounted at SecretsDir/<name>
}

// splitList splits a comma-separated value, trimming blanks and dropping empty items, so a
// trailing comma or a multi-line (folded) YAML value is fine.
func splitList(v string) []string {
	var out []string
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// parseSecretEnv parses "NAME=SECRET/KEY[,NAME=SECRET/KEY...]". The error lists every bad
// item on one line.
func parseSecretEnv(v string) ([]secretEnv, error) {
	var out []secretEnv
	var probs []string
	seen := map[string]bool{}
	for _, item := range splitList(v) {
		name, ref, ok := strings.Cut(item, "=")
		secret, key, ok2 := strings.Cut(ref, "/")
		name, secret, key = strings.TrimSpace(name), strings.TrimSpace(secret), strings.TrimSpace(key)
		if !ok || !ok2 || name == "" || secret == "" || key == "" {
			probs = append(probs, fmt.Sprintf("%q is not NAME=SECRET/KEY", item))
			continue
		}
		var p []string
		if msgs := validation.IsEnvVarName(name); len(msgs) > 0 {
			p = append(p, fmt.Sprintf("%q is not a valid environment variable name", name))
		} else if slices.Contains(injectorEnv, name) {
			p = append(p, fmt.Sprintf("%s is set by the injector itself", name))
		} else if seen[name] {
			p = append(p, fmt.Sprintf("%s is set twice", name))
		}
		if msgs := validation.IsDNS1123Subdomain(secret); len(msgs) > 0 {
			p = append(p, fmt.Sprintf("%q is not a valid Secret name", secret))
		}
		if msgs := validation.IsConfigMapKey(key); len(msgs) > 0 { // Secret keys follow the same rule
			p = append(p, fmt.Sprintf("%q is not a valid Secret key", key))
		}
		if len(p) > 0 {
			probs = append(probs, fmt.Sprintf("%q: %s", item, strings.Join(p, ", ")))
			continue
		}
		seen[name] = true
		out = append(out, secretEnv{name: name, secret: secret, key: key})
	}
	if len(probs) > 0 {
		return out, errors.New(strings.Join(probs, "; ") + " (want NAME=SECRET/KEY[,NAME=SECRET/KEY...])")
	}
	return out, nil
}

// parseSecretNames parses "SECRET[,SECRET...]".
func parseSecretNames(v string) ([]string, error) {
	var out, probs []string
	for _, name := range splitList(v) {
		switch {
		case len(validation.IsDNS1123Subdomain(name)) > 0:
			probs = append(probs, fmt.Sprintf("%q is not a valid Secret name", name))
		case slices.Contains(out, name):
			probs = append(probs, fmt.Sprintf("%q is listed twice", name))
		default:
			out = append(out, name)
		}
	}
	if len(probs) > 0 {
		return out, errors.New(strings.Join(probs, "; ") + " (want SECRET[,SECRET...])")
	}
	return out, nil
}

// parseSecretDefaults parses the injector's defaults (Options) with the annotations' syntax.
func parseSecretDefaults(o *Options) (secretRefs, []error) {
	var refs secretRefs
	var errs []error
	var err error
	if refs.env, err = parseSecretEnv(o.SecretEnv); err != nil {
		errs = append(errs, fmt.Errorf("sidecar secret env: %w", err))
	}
	if refs.envFrom, err = parseSecretNames(o.SecretEnvFrom); err != nil {
		errs = append(errs, fmt.Errorf("sidecar secret env from: %w", err))
	}
	if refs.volumes, err = parseSecretNames(o.SecretVolumes); err != nil {
		errs = append(errs, fmt.Errorf("sidecar secret volumes: %w", err))
	}
	return refs, errs
}

// secretVolumeName is the name of the i-th injected Secret volume.
func secretVolumeName(i int) string { return SecretVolumePrefix + strconv.Itoa(i) }

// envVars are the sidecar's variables from Secret keys. A missing Secret or key keeps the
// sidecar from starting (CreateContainerConfigError, with an event naming it), which is
// what a missing password should do.
func (r secretRefs) envVars() []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range r.env {
		out = append(out, corev1.EnvVar{Name: e.name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: e.secret}, Key: e.key,
		}}})
	}
	return out
}

func (r secretRefs) envFromSources() []corev1.EnvFromSource {
	var out []corev1.EnvFromSource
	for _, name := range r.envFrom {
		out = append(out, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: name},
		}})
	}
	return out
}

func (r secretRefs) podVolumes() []corev1.Volume {
	var out []corev1.Volume
	for i, name := range r.volumes {
		out = append(out, corev1.Volume{Name: secretVolumeName(i), VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: name},
		}})
	}
	return out
}

func (r secretRefs) volumeMounts() []corev1.VolumeMount {
	var out []corev1.VolumeMount
	for i, name := range r.volumes {
		out = append(out, corev1.VolumeMount{Name: secretVolumeName(i), MountPath: SecretsDir + "/" + name, ReadOnly: true})
	}
	return out
}
