package injector

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/mqsidecar/mqsidecar/internal/textdist"
)

// Pod annotations read by the injector. Every annotation is optional except Inject (the
// opt-in) and Config (the sidecar needs its configuration file).
const (
	// AnnotationInject opts a pod in: "true" (any strconv.ParseBool value) injects.
	AnnotationInject = "mqsidecar.io/inject"
	// AnnotationConfig names the ConfigMap (in the pod's namespace) holding the sidecar's
	// configuration file. Required when injecting.
	AnnotationConfig = "mqsidecar.io/config"
	// AnnotationConfigKey is the key of that ConfigMap holding the file; default config.yaml.
	AnnotationConfigKey = "mqsidecar.io/config-key"
	// AnnotationAppPort is the port the application listens on (on 127.0.0.1). When set, it
	// overrides app.url with http://127.0.0.1:<port><app-path>.
	AnnotationAppPort = "mqsidecar.io/app-port"
	// AnnotationAppPath is the path messages are POSTed to; default "/". Needs app-port.
	AnnotationAppPath = "mqsidecar.io/app-path"
	// AnnotationAppHealthPath sets app.health_url to http://127.0.0.1:<port><path>. Needs
	// app-port.
	AnnotationAppHealthPath = "mqsidecar.io/app-health-path"
	// AnnotationImage overrides the sidecar image.
	AnnotationImage = "mqsidecar.io/image"
	// AnnotationCPURequest, AnnotationCPULimit, AnnotationMemoryRequest and
	// AnnotationMemoryLimit override the sidecar's resources (Kubernetes quantities).
	AnnotationCPURequest    = "mqsidecar.io/cpu-request"
	AnnotationCPULimit      = "mqsidecar.io/cpu-limit"
	AnnotationMemoryRequest = "mqsidecar.io/memory-request"
	AnnotationMemoryLimit   = "mqsidecar.io/memory-limit"
	// AnnotationLogLevel sets log.level: debug, info, warn or error.
	AnnotationLogLevel = "mqsidecar.io/log-level"
	// AnnotationSidecarMode is "native" (init container with restartPolicy Always, Kubernetes
	// >= 1.29) or "container" (a regular container, for older clusters).
	AnnotationSidecarMode = "mqsidecar.io/sidecar-mode"
	// AnnotationWaitForReady ("true" or "false") says whether the app's containers wait for
	// the sidecar to be ready (/readyz: broker connected, shared store reachable) or only
	// for it to have started (/healthz: process up, configuration loaded, dedup store open),
	// which is the default (the injector's --wait-for-ready). It sets the native sidecar's
	// startup probe. "true" cannot be combined with AnnotationAppHealthPath (the sidecar is
	// ready only once the app answers, and the app would start only once the sidecar is
	// ready) nor with sidecar-mode "container" (a regular container holds nothing back);
	// both are refused.
	AnnotationWaitForReady = "mqsidecar.io/wait-for-ready"
	// AnnotationAdminPort is the sidecar's admin port (/healthz /readyz /metrics); default
	// from the injector's --admin-port (9464).
	AnnotationAdminPort = "mqsidecar.io/admin-port"
	// AnnotationDedupStorage is "auto" (default: a PVC for StatefulSets, else an emptyDir),
	// "emptydir" or "pvc".
	AnnotationDedupStorage = "mqsidecar.io/dedup-storage"
	// AnnotationDedupStorageSize is the size of the dedup PVC a StatefulSet gets.
	AnnotationDedupStorageSize = "mqsidecar.io/dedup-storage-size"
	// AnnotationDedupStorageClass is the StorageClass of that PVC ("" = cluster default).
	AnnotationDedupStorageClass = "mqsidecar.io/dedup-storage-class"
	// AnnotationKafkaStaticMembership sets the Kafka group instance ID (static membership,
	// source.kafka.group_instance_id) to the pod name. Default: on exactly when the pod name
	// is stable, i.e. the pod is controlled by a StatefulSet. A pod whose name is generated
	// (Deployment, ReplicaSet, Job, DaemonSet) never comes back under its name, and its static
	// member would hold its partitions until the group's session timeout; "true" on such a
	// pod is therefore refused. See stableName.
	AnnotationKafkaStaticMembership = "mqsidecar.io/kafka-static-membership"
	// AnnotationRocketMQStableInstanceName, "true" by default, sets
	// source.rocketmq.instance_name to the pod name, so a restarted sidecar is the same
	// RocketMQ client and takes its orderly queue locks back at once. The client ID is
	// "<pod IP>@<instance name>", so a replaced pod is always a new client whatever its name:
	// unlike Kafka static membership this is safe for every kind of pod.
	AnnotationRocketMQStableInstanceName = "mqsidecar.io/rocketmq-stable-instance-name"
	// AnnotationSecretEnv sets sidecar environment variables from Secret keys:
	// "NAME=SECRET/KEY[,NAME=SECRET/KEY...]", e.g.
	// "MQSIDECAR_DEDUP_REDIS_PASSWORD=orders-redis/password". The Secrets are in the pod's
	// namespace. Replaces the injector's default (--sidecar-secret-env).
	AnnotationSecretEnv = "mqsidecar.io/secret-env"
	// AnnotationSecretEnvFrom adds whole Secrets to the sidecar's environment (envFrom):
	// "SECRET[,SECRET...]"; their keys are the variable names. Replaces the injector's
	// default (--sidecar-secret-env-from).
	AnnotationSecretEnvFrom = "mqsidecar.io/secret-env-from"
	// AnnotationSecretVolumes mounts Secrets read-only into the sidecar at
	// SecretsDir/<secret> (TLS files): "SECRET[,SECRET...]". Replaces the injector's
	// default (--sidecar-secret-volumes).
	AnnotationSecretVolumes = "mqsidecar.io/secret-volumes"

	// AnnotationStatus is written by the injector on pods it mutated ("injected"); a pod that
	// carries it is never mutated again.
	AnnotationStatus = "mqsidecar.io/status"
	// LabelInjected ("true") marks injected pods, so a PodMonitor can select them.
	LabelInjected = "mqsidecar.io/injected"
)

// knownAnnotations are all annotations under mqsidecar.io/. Any other key under that prefix
// is a typo and is refused, like an unknown configuration key.
var knownAnnotations = []string{
	AnnotationInject, AnnotationConfig, AnnotationConfigKey, AnnotationAppPort, AnnotationAppPath,
	AnnotationAppHealthPath, AnnotationImage, AnnotationCPURequest, AnnotationCPULimit,
	AnnotationMemoryRequest, AnnotationMemoryLimit, AnnotationLogLevel, AnnotationSidecarMode,
	AnnotationWaitForReady, AnnotationAdminPort, AnnotationDedupStorage, AnnotationDedupStorageSize,
	AnnotationDedupStorageClass, AnnotationKafkaStaticMembership, AnnotationRocketMQStableInstanceName,
	AnnotationSecretEnv, AnnotationSecretEnvFrom, AnnotationSecretVolumes, AnnotationStatus,
}

const annotationPrefix = "mqsidecar.io/"

// Mode is how the sidecar is added to the pod.
type Mode string

// Sidecar modes.
const (
	// ModeNative adds an init container with restartPolicy: Always (Kubernetes >= 1.29).
	ModeNative Mode = "native"
	// ModeContainer adds a regular container.
	ModeContainer Mode = "container"
)

// Dedup storage choices (AnnotationDedupStorage).
const (
	storageAuto     = "auto"
	storageEmptyDir = "emptydir"
	storagePVC      = "pvc"
)

// settings is what the annotations of one pod (or pod template) ask for, defaults applied.
type settings struct {
	configMap     string
	configKey     string
	appPort       int32 // 0 = leave app.url to the config file
	appPath       string
	appHealthPath string
	image         string
	resources     corev1.ResourceRequirements
	logLevel      string
	mode          Mode
	waitForReady  bool // the native sidecar's startup probe is /readyz, else /healthz
	adminPort     int32
	dedupStorage  string
	pvcSize       resource.Quantity
	storageClass  string
	// staticMembership and rocketmqInstanceName are nil when their annotation is absent:
	// the default depends on the pod (MutatePod), not only on the annotations.
	staticMembership     *bool
	rocketmqInstanceName *bool
	secrets              secretRefs
}

// wantsInjection reports whether the annotations opt in. An unparsable value is an error
// rather than "no": the owner clearly meant something.
func wantsInjection(ann map[string]string) (bool, error) {
	v, ok := ann[AnnotationInject]
	if !ok {
		return false, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("%s: must be \"true\" or \"false\", got %q", AnnotationInject, v)
	}
	return b, nil
}

// parseSettings validates the annotations of a pod that opted in and applies defaults from
// opts. The error lists every problem, one per line, each naming its annotation.
func parseSettings(ann map[string]string, opts *Options) (settings, error) {
	s := settings{
		configKey:    "config.yaml",
		appPath:      "/",
		image:        opts.Image,
		resources:    *opts.Resources.DeepCopy(),
		mode:         opts.Mode,
		waitForReady: opts.WaitForReady,
		adminPort:    opts.AdminPort,
		dedupStorage: storageAuto,
		pvcSize:      opts.DedupPVCSize.DeepCopy(),
		storageClass: opts.DedupStorageClass,
		secrets:      opts.secrets,
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}

	for k := range ann {
		if strings.HasPrefix(k, annotationPrefix) && !slices.Contains(knownAnnotations, k) {
			bad(k, "unknown annotation%s", suggest(k))
		}
	}

	s.configMap = strings.TrimSpace(ann[AnnotationConfig])
	switch {
	case s.configMap == "":
		bad(AnnotationConfig, "required: the name of a ConfigMap holding the sidecar configuration")
	default:
		if msgs := validation.IsDNS1123Subdomain(s.configMap); len(msgs) > 0 {
			bad(AnnotationConfig, "%q is not a valid ConfigMap name: %s", s.configMap, strings.Join(msgs, "; "))
		}
	}
	if v, ok := ann[AnnotationConfigKey]; ok {
		if msgs := validation.IsConfigMapKey(v); len(msgs) > 0 {
			bad(AnnotationConfigKey, "%q is not a valid ConfigMap key: %s", v, strings.Join(msgs, "; "))
		} else {
			s.configKey = v
		}
	}

	if v, ok := ann[AnnotationAppPort]; ok {
		p, err := parsePort(v)
		if err != nil {
			bad(AnnotationAppPort, "%v", err)
		}
		s.appPort = p
	}
	if v, ok := ann[AnnotationAppPath]; ok {
		if err := checkPath(v); err != nil {
			bad(AnnotationAppPath, "%v", err)
		}
		if _, hasPort := ann[AnnotationAppPort]; !hasPort {
			bad(AnnotationAppPath, "needs %s (the URL is http://127.0.0.1:<app-port><app-path>)", AnnotationAppPort)
		}
		s.appPath = v
	}
	if v, ok := ann[AnnotationAppHealthPath]; ok {
		if err := checkPath(v); err != nil {
			bad(AnnotationAppHealthPath, "%v", err)
		}
		if _, hasPort := ann[AnnotationAppPort]; !hasPort {
			bad(AnnotationAppHealthPath, "needs %s", AnnotationAppPort)
		}
		s.appHealthPath = v
	}

	if v, ok := ann[AnnotationImage]; ok {
		if v == "" || strings.ContainsAny(v, " \t\r\n") {
			bad(AnnotationImage, "%q is not an image reference", v)
		} else {
			s.image = v
		}
	}

	resAnn := []struct {
		key  string
		name corev1.ResourceName
		list *corev1.ResourceList
	}{
		{AnnotationCPURequest, corev1.ResourceCPU, &s.resources.Requests},
		{AnnotationCPULimit, corev1.ResourceCPU, &s.resources.Limits},
		{AnnotationMemoryRequest, corev1.ResourceMemory, &s.resources.Requests},
		{AnnotationMemoryLimit, corev1.ResourceMemory, &s.resources.Limits},
	}
	for _, r := range resAnn {
		v, ok := ann[r.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(v))
		if err != nil || q.Sign() <= 0 {
			bad(r.key, "%q is not a positive Kubernetes quantity (e.g. 100m, 128Mi)", v)
			continue
		}
		if *r.list == nil {
			*r.list = corev1.ResourceList{}
		}
		(*r.list)[r.name] = q
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := s.resources.Requests[name]
		lim, hasLim := s.resources.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("mqsidecar.io/%s-request %s is greater than mqsidecar.io/%s-limit %s",
				name, req.String(), name, lim.String()))
		}
	}

	if v, ok := ann[AnnotationLogLevel]; ok {
		switch v {
		case "debug", "info", "warn", "error":
			s.logLevel = v
		default:
			bad(AnnotationLogLevel, "must be one of debug, info, warn, error; got %q", v)
		}
	}

	if v, ok := ann[AnnotationSidecarMode]; ok {
		switch Mode(v) {
		case ModeNative, ModeContainer:
			s.mode = Mode(v)
		default:
			bad(AnnotationSidecarMode, "must be %q or %q, got %q", ModeNative, ModeContainer, v)
		}
	}

	waitAnn, waitSet := ann[AnnotationWaitForReady]
	if waitSet {
		on, err := strconv.ParseBool(strings.TrimSpace(waitAnn))
		if err != nil {
			bad(AnnotationWaitForReady, "must be \"true\" or \"false\", got %q", waitAnn)
		}
		s.waitForReady = on
	}
	errs = append(errs, startGateProblems(s, waitSet)...)

	if v, ok := ann[AnnotationAdminPort]; ok {
		p, err := parsePort(v)
		if err != nil {
			bad(AnnotationAdminPort, "%v", err)
		} else {
			s.adminPort = p
		}
	}
	if s.appPort != 0 && s.appPort == s.adminPort {
		errs = append(errs, fmt.Errorf("%s and the sidecar admin port are both %d; set %s to another port",
			AnnotationAppPort, s.appPort, AnnotationAdminPort))
	}

	if v, ok := ann[AnnotationDedupStorage]; ok {
		switch v {
		case storageAuto, storageEmptyDir, storagePVC:
			s.dedupStorage = v
		default:
			bad(AnnotationDedupStorage, "must be %q, %q or %q, got %q", storageAuto, storageEmptyDir, storagePVC, v)
		}
	}
	if v, ok := ann[AnnotationDedupStorageSize]; ok {
		q, err := resource.ParseQuantity(strings.TrimSpace(v))
		if err != nil || q.Sign() <= 0 {
			bad(AnnotationDedupStorageSize, "%q is not a positive quantity (e.g. 1Gi)", v)
		} else {
			s.pvcSize = q
		}
	}
	if v, ok := ann[AnnotationDedupStorageClass]; ok {
		if msgs := validation.IsDNS1123Subdomain(v); len(msgs) > 0 {
			bad(AnnotationDedupStorageClass, "%q is not a valid StorageClass name: %s", v, strings.Join(msgs, "; "))
		} else {
			s.storageClass = v
		}
	}
	for _, b := range []struct {
		key string
		dst **bool
	}{
		{AnnotationKafkaStaticMembership, &s.staticMembership},
		{AnnotationRocketMQStableInstanceName, &s.rocketmqInstanceName},
	} {
		if v, ok := ann[b.key]; ok {
			on, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				bad(b.key, "must be \"true\" or \"false\", got %q", v)
				continue
			}
			*b.dst = &on
		}
	}

	// Secret references: an annotation replaces the injector's default of its kind, so a pod
	// can also drop a default with an empty value.
	if v, ok := ann[AnnotationSecretEnv]; ok {
		env, err := parseSecretEnv(v)
		if err != nil {
			bad(AnnotationSecretEnv, "%v", err)
		}
		s.secrets.env = env
	}
	if v, ok := ann[AnnotationSecretEnvFrom]; ok {
		names, err := parseSecretNames(v)
		if err != nil {
			bad(AnnotationSecretEnvFrom, "%v", err)
		}
		s.secrets.envFrom = names
	}
	if v, ok := ann[AnnotationSecretVolumes]; ok {
		names, err := parseSecretNames(v)
		if err != nil {
			bad(AnnotationSecretVolumes, "%v", err)
		}
		s.secrets.volumes = names
	}

	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return s, errors.Join(errs...)
	}
	return s, nil
}

// startGateProblems refuses the start gates that cannot work: the app's containers waiting
// for a sidecar that waits for the app (the pod would never start), or a gate on a regular
// container, which holds nothing back. explicit says whether the pod's annotation asked for
// s.waitForReady rather than the injector's default; a default never applies to a regular
// container, so only the annotation is refused there.
func startGateProblems(s settings, explicit bool) []error {
	if !s.waitForReady {
		return nil
	}
	from := AnnotationWaitForReady + ": \"true\""
	if !explicit {
		from = "the injector's default --wait-for-ready (chart value sidecar.waitForReady)"
	}
	switch {
	case s.mode == ModeNative && s.appHealthPath != "":
		return []error{fmt.Errorf("%s cannot be combined with %s: the sidecar is ready only once the app's health URL "+
			"answers, and with %s the app's containers start only once the sidecar is ready, so the pod would never "+
			"start. Remove %s or set %s: \"false\"", AnnotationAppHealthPath, from, from, AnnotationAppHealthPath, AnnotationWaitForReady)}
	case s.mode == ModeContainer && explicit:
		return []error{fmt.Errorf("%s: \"true\" needs %s %q: a regular sidecar container does not hold the app's "+
			"containers back", AnnotationWaitForReady, AnnotationSidecarMode, ModeNative)}
	}
	return nil
}

func parsePort(v string) (int32, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("must be a port number 1-65535, got %q", v)
	}
	return int32(n), nil
}

// checkPath accepts an absolute URL path (with an optional query), nothing that would change
// the host the sidecar talks to.
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
		return fmt.Errorf("must be an absolute path starting with a single \"/\", got %q", p)
	}
	u, err := url.ParseRequestURI(p)
	if err != nil || u.Host != "" || u.Fragment != "" || strings.ContainsAny(p, " \t\r\n#") {
		return fmt.Errorf("%q is not a valid URL path", p)
	}
	return nil
}

// suggest names the known annotation closest to a mistyped one, if one is close.
func suggest(key string) string {
	best, bestDist := "", 4 // more than 3 edits apart is not a typo
	for _, k := range knownAnnotations {
		if d := textdist.Levenshtein(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return " (see the chart README for the list)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}
