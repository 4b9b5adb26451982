package injector

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Names and paths the injected sidecar uses. They are part of the contract with the chart,
// the Dockerfile and the documentation.
const (
	// ContainerName is the name of the injected container.
	ContainerName = "mqsidecar"
	// DedupVolume is the volume holding the dedup store: an emptyDir added by the injector,
	// or, if the pod already has a volume of that name (a StatefulSet volumeClaimTemplate),
	// that volume.
	DedupVolume = "mqsidecar-dedup"
	// ConfigVolume is the ConfigMap volume holding the configuration file.
	ConfigVolume = "mqsidecar-config"
	// DataDir is where DedupVolume is mounted (the image's data directory).
	DataDir = "/var/lib/mqsidecar"
	// ConfigDir is where ConfigVolume is mounted; the file is always ConfigDir/config.yaml.
	ConfigDir = "/etc/mqsidecar"
	// AdminPortName names the sidecar's admin container port (PodMonitor endpoints use it).
	AdminPortName = "mqsidecar-admin"
	// NonRootUID is the distroless "nonroot" user the image runs as.
	NonRootUID int64 = 65532

	statusInjected = "injected"
	configFileName = "config.yaml"
)

// Environment variables the injector sets on the sidecar (configuration overrides, see the
// config package: MQSIDECAR_ + the key upper-cased with "_").
const (
	envPodName              = "POD_NAME"
	envPodNamespace         = "POD_NAMESPACE"
	envAdminListen          = "MQSIDECAR_ADMIN_LISTEN"
	envDedupPath            = "MQSIDECAR_DEDUP_PATH"
	envKafkaGroupInstanceID = "MQSIDECAR_SOURCE_KAFKA_GROUP_INSTANCE_ID"
	envRocketMQInstanceName = "MQSIDECAR_SOURCE_ROCKETMQ_INSTANCE_NAME"
	envAppURL               = "MQSIDECAR_APP_URL"
	envAppHealthURL         = "MQSIDECAR_APP_HEALTH_URL"
	envLogLevel             = "MQSIDECAR_LOG_LEVEL"
	maxRocketMQInstanceName = 64 // config: source.rocketmq.instance_name is 1-64 characters
)

// injectorEnv are the variables the injector sets itself (some only with their annotation).
// A Secret reference may not set one of them: two definitions of one variable would leave
// the outcome to Kubernetes' ordering rules.
var injectorEnv = []string{
	envPodName, envPodNamespace, envAdminListen, envDedupPath, envKafkaGroupInstanceID,
	envRocketMQInstanceName, envAppURL, envAppHealthURL, envLogLevel,
}

// Options are the injector-wide defaults; annotations override some of them per pod.
type Options struct {
	// Image is the sidecar image (required).
	Image string
	// ImagePullPolicy of the sidecar; "" leaves Kubernetes' default.
	ImagePullPolicy corev1.PullPolicy
	// Mode is the default sidecar mode (ModeNative if empty).
	Mode Mode
	// Resources are the sidecar's default requests and limits.
	Resources corev1.ResourceRequirements
	// AdminPort is the default admin port (9464 if 0).
	AdminPort int32
	// WaitForReady is the default of AnnotationWaitForReady: the native sidecar's startup
	// probe is /readyz (the app's containers start once the sidecar is connected to its
	// broker) instead of /healthz (once it started: process up, configuration loaded, dedup
	// store open). Off by default: with it, a broker outage keeps every new pod from
	// starting, and a configuration with app.health_url never starts at all.
	WaitForReady bool
	// MinTerminationGracePeriod raises a pod's terminationGracePeriodSeconds to at least this,
	// so the sidecar's drain (drain_delay + shutdown_timeout) fits before SIGKILL. 0 = never
	// raise.
	MinTerminationGracePeriod time.Duration
	// DedupPVCSize is the default size of the dedup PVC of StatefulSets (1Gi if zero).
	DedupPVCSize resource.Quantity
	// DedupStorageClass is the default StorageClass of that PVC ("" = cluster default).
	DedupStorageClass string
	// SecretEnv, SecretEnvFrom and SecretVolumes are the default Secret references of every
	// sidecar, in the syntax of AnnotationSecretEnv, AnnotationSecretEnvFrom and
	// AnnotationSecretVolumes, which replace them per pod. The Secrets are looked up in each
	// pod's namespace. "" = none.
	SecretEnv, SecretEnvFrom, SecretVolumes string

	secrets secretRefs // parsed by New
}

// ErrInvalidOptions is returned by New for unusable Options.
var ErrInvalidOptions = errors.New("injector: invalid options")

// Injector computes the mutation of pods and StatefulSets. It is immutable after New and
// safe for concurrent use.
type Injector struct {
	opts Options
}

// New validates opts, applies defaults and returns an Injector.
func New(opts Options) (*Injector, error) {
	if opts.Mode == "" {
		opts.Mode = ModeNative
	}
	if opts.AdminPort == 0 {
		opts.AdminPort = 9464
	}
	if opts.DedupPVCSize.IsZero() {
		opts.DedupPVCSize = resource.MustParse("1Gi")
	}
	var errs []error
	if opts.Image == "" || strings.ContainsAny(opts.Image, " \t\r\n") {
		errs = append(errs, fmt.Errorf("sidecar image: %q is not an image reference", opts.Image))
	}
	if opts.Mode != ModeNative && opts.Mode != ModeContainer {
		errs = append(errs, fmt.Errorf("sidecar mode: must be %q or %q, got %q", ModeNative, ModeContainer, opts.Mode))
	}
	switch opts.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("image pull policy: must be Always, IfNotPresent or Never, got %q", opts.ImagePullPolicy))
	}
	if opts.AdminPort < 1 || opts.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("admin port: must be 1-65535, got %d", opts.AdminPort))
	}
	if opts.MinTerminationGracePeriod < 0 {
		errs = append(errs, fmt.Errorf("min termination grace period: must not be negative, got %s", opts.MinTerminationGracePeriod))
	}
	if opts.DedupPVCSize.Sign() <= 0 {
		errs = append(errs, fmt.Errorf("dedup PVC size: must be positive, got %s", opts.DedupPVCSize.String()))
	}
	secrets, serrs := parseSecretDefaults(&opts)
	opts.secrets = secrets
	errs = append(errs, serrs...)
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := opts.Resources.Requests[name]
		lim, hasLim := opts.Resources.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("%s request %s is greater than its limit %s", name, req.String(), lim.String()))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return &Injector{opts: opts}, nil
}

// outcome is the decision about one object.
type outcome struct {
	result   string // resultInjected, resultSkipped or resultDenied
	patch    []patchOp
	warnings []string
	denial   string // why, when result is resultDenied
}

const (
	resultInjected = "injected"
	resultSkipped  = "skipped"
	resultDenied   = "denied"
	resultError    = "error"
)

func skipped(warnings ...string) outcome { return outcome{result: resultSkipped, warnings: warnings} }

func denied(err error) outcome {
	return outcome{result: resultDenied, denial: "mqsidecar injection refused, fix the pod annotations:\n" + err.Error()}
}

// MutatePod decides what to do with a pod being created.
func (in *Injector) MutatePod(pod *corev1.Pod) outcome {
	ann := pod.Annotations
	want, err := wantsInjection(ann)
	if err != nil {
		return denied(err)
	}
	if !want {
		return skipped()
	}
	if ann[AnnotationStatus] == statusInjected {
		return skipped()
	}
	if hasContainer(pod.Spec.Containers, ContainerName) || hasContainer(pod.Spec.InitContainers, ContainerName) {
		return skipped(fmt.Sprintf("mqsidecar: the pod already has a container named %q; not injecting another", ContainerName))
	}
	s, err := parseSettings(ann, &in.opts)
	if err != nil {
		return denied(err)
	}

	var warnings []string
	var errs []error
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, p := range c.Ports {
			if p.ContainerPort == s.adminPort && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
				errs = append(errs, fmt.Errorf("container %q already uses port %d, the sidecar admin port; set %s to a free port",
					c.Name, s.adminPort, AnnotationAdminPort))
			}
			if p.Name == AdminPortName {
				errs = append(errs, fmt.Errorf("container %q already has a port named %q", c.Name, AdminPortName))
			}
		}
	}
	if hasVolume(pod.Spec.Volumes, ConfigVolume) {
		errs = append(errs, fmt.Errorf("the pod already has a volume named %q, which the injector adds", ConfigVolume))
	}
	for i := range s.secrets.volumes {
		if name := secretVolumeName(i); hasVolume(pod.Spec.Volumes, name) {
			errs = append(errs, fmt.Errorf("the pod already has a volume named %q, which the injector adds for %s",
				name, AnnotationSecretVolumes))
		}
	}
	id, err := podIdentity(pod, s)
	if err != nil {
		errs = append(errs, err)
	}
	ownedByStatefulSet := isOwnedBy(pod.OwnerReferences, "apps", "StatefulSet")
	haveDedupVolume := hasVolume(pod.Spec.Volumes, DedupVolume)
	if !haveDedupVolume && s.dedupStorage == storagePVC {
		errs = append(errs, fmt.Errorf("%s: %q needs a volume named %q in the pod: the injector adds a volumeClaimTemplate of "+
			"that name when a StatefulSet is created with this annotation; for a StatefulSet created before, add the "+
			"volumeClaimTemplate yourself or use %q", AnnotationDedupStorage, storagePVC, DedupVolume, storageEmptyDir))
	}
	if !haveDedupVolume && s.dedupStorage == storageAuto && ownedByStatefulSet {
		warnings = append(warnings, fmt.Sprintf("mqsidecar: StatefulSet pod without a %q volumeClaimTemplate (was the StatefulSet "+
			"created before the injector?): the dedup store uses an emptyDir and is lost when the pod is deleted", DedupVolume))
	}
	if len(errs) > 0 {
		return denied(errors.Join(errs...))
	}

	c := in.container(s, id)
	var ops []patchOp
	if s.mode == ModeNative {
		ops = appendToList(ops, "/spec/initContainers", len(pod.Spec.InitContainers), c)
	} else {
		ops = appendToList(ops, "/spec/containers", len(pod.Spec.Containers), c)
	}

	volumes := []corev1.Volume{{
		Name: ConfigVolume,
		VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: s.configMap},
			Items:                []corev1.KeyToPath{{Key: s.configKey, Path: configFileName}},
		}},
	}}
	if !haveDedupVolume {
		volumes = append(volumes, corev1.Volume{
			Name:         DedupVolume,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		})
	}
	volumes = append(volumes, s.secrets.podVolumes()...)
	n := len(pod.Spec.Volumes)
	for _, v := range volumes {
		ops = appendToList(ops, "/spec/volumes", n, v)
		n++
	}

	if min := in.opts.MinTerminationGracePeriod; min > 0 {
		want := int64((min + time.Second - 1) / time.Second)
		switch cur := pod.Spec.TerminationGracePeriodSeconds; {
		case cur == nil:
			ops = append(ops, patchOp{Op: "add", Path: "/spec/terminationGracePeriodSeconds", Value: want})
		case *cur < want:
			ops = append(ops, patchOp{Op: "replace", Path: "/spec/terminationGracePeriodSeconds", Value: want})
		}
	}

	ops = setMapEntry(ops, "/metadata/annotations", pod.Annotations, AnnotationStatus, statusInjected)
	ops = setMapEntry(ops, "/metadata/labels", pod.Labels, LabelInjected, "true")
	return outcome{result: resultInjected, patch: ops, warnings: warnings}
}

// MutateStatefulSet gives a StatefulSet whose pod template opts in a volumeClaimTemplate for
// the dedup store, so every pod keeps its dedup history across restarts and rescheduling.
// It also validates the template's annotations, so a mistake is refused when the StatefulSet
// is applied instead of surfacing later as pods that fail to be created.
func (in *Injector) MutateStatefulSet(sts *appsv1.StatefulSet) outcome {
	ann := sts.Spec.Template.Annotations
	want, err := wantsInjection(ann)
	if err != nil {
		return denied(err)
	}
	if !want || ann[AnnotationStatus] == statusInjected {
		return skipped()
	}
	s, err := parseSettings(ann, &in.opts)
	if err != nil {
		return denied(err)
	}
	if s.dedupStorage == storageEmptyDir {
		return skipped()
	}
	for _, t := range sts.Spec.VolumeClaimTemplates {
		if t.Name == DedupVolume {
			return skipped() // the owner brought their own; the pod mutation mounts it
		}
	}
	if hasVolume(sts.Spec.Template.Spec.Volumes, DedupVolume) {
		return skipped() // a volume of that name in the template would clash with a claim template
	}

	pvc := corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: DedupVolume},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: s.pvcSize},
			},
		},
	}
	if s.storageClass != "" {
		pvc.Spec.StorageClassName = &s.storageClass
	}
	var ops []patchOp
	ops = appendToList(ops, "/spec/volumeClaimTemplates", len(sts.Spec.VolumeClaimTemplates), pvc)

	// A fresh volume is usually owned by root; the sidecar runs as NonRootUID. fsGroup makes
	// the kubelet hand the volume to that group. Only set when the owner did not choose one.
	var warnings []string
	switch sc := sts.Spec.Template.Spec.SecurityContext; {
	case sc == nil:
		ops = append(ops, patchOp{Op: "add", Path: "/spec/template/spec/securityContext",
			Value: map[string]any{"fsGroup": NonRootUID}})
	case sc.FSGroup == nil:
		ops = append(ops, patchOp{Op: "add", Path: "/spec/template/spec/securityContext/fsGroup", Value: NonRootUID})
	default:
		if *sc.FSGroup != NonRootUID {
			warnings = append(warnings, fmt.Sprintf("mqsidecar: pod fsGroup is %d; make sure uid %d can write the %q volume",
				*sc.FSGroup, NonRootUID, DedupVolume))
		}
	}
	return outcome{result: resultInjected, patch: ops, warnings: warnings}
}

// identity is what the sidecar takes from the pod name.
type identity struct {
	kafkaGroupInstanceID bool // source.kafka.group_instance_id = pod name (static membership)
	rocketmqInstanceName bool // source.rocketmq.instance_name = pod name
}

// stableName reports whether the pod's name is stable: a replacement of the pod (after an
// eviction, a node failure, a rollout) comes back under the same name. That holds for the
// pods of a StatefulSet, whose controller names them <set>-<ordinal> and sets the name and
// a controller ownerReference in the create request itself (so both are visible here, while
// the name of a pod created with generateName may not even be generated yet at admission).
// Any API group's StatefulSet counts (e.g. OpenKruise's), as long as the name is set. The
// statefulset.kubernetes.io/pod-name label is not used: anyone can copy it onto any pod.
// The second result says why not, for messages.
func stableName(pod *corev1.Pod) (bool, string) {
	owner := controllerOf(pod.OwnerReferences)
	if owner != nil && owner.Kind == "StatefulSet" && pod.Name != "" {
		return true, ""
	}
	switch {
	case owner != nil:
		return false, fmt.Sprintf("it is created by %s %s, whose replacement pods get new names", owner.Kind, owner.Name)
	case pod.GenerateName != "":
		return false, fmt.Sprintf("its name is generated (generateName %q)", pod.GenerateName)
	case pod.Name == "":
		return false, "it has no name"
	}
	return false, "it has no controller (set the annotation to \"true\" if whoever creates it reuses the name)"
}

// podIdentity decides what the sidecar takes from the pod name (see
// AnnotationKafkaStaticMembership and AnnotationRocketMQStableInstanceName).
//
// Kafka static membership defaults to on exactly for StatefulSet pods. A static member that
// leaves does not leave the group: its partitions stay assigned to it until the session
// timeout, waiting for a member with the same group instance ID. A StatefulSet pod comes
// back under its name and takes them over at once, without a rebalance; a Deployment's
// replaced pod never comes back, so every rollout would stall all of the old pods'
// partitions for the session timeout. An explicit "true" is honoured where the name is
// stable or was chosen by whoever created the pod (no generateName, no controller), and
// refused otherwise: it asks for exactly the stall, and refusing at creation says so where
// the owner looks, instead of a lag graph after every rollout.
//
// The RocketMQ instance name is the pod name for every pod unless the annotation says
// "false": the client ID is "<pod IP>@<instance name>", so a replacement pod is a new
// client whatever its name and nothing waits for the old one, while a sidecar restarted
// inside its pod is the same client and takes its orderly queue locks back at once. Only a
// name too long for source.rocketmq.instance_name (which only a bare pod can have) is left
// out by default, and refused with an explicit "true".
func podIdentity(pod *corev1.Pod, s settings) (identity, error) {
	var id identity
	var errs []error
	stable, why := stableName(pod)
	switch {
	case s.staticMembership == nil:
		id.kafkaGroupInstanceID = stable
	case !*s.staticMembership:
	case stable || (pod.Name != "" && pod.GenerateName == "" && controllerOf(pod.OwnerReferences) == nil):
		id.kafkaGroupInstanceID = true
	default:
		errs = append(errs, fmt.Errorf("%s: \"true\" needs a stable pod name, but this pod's name is not stable: %s. "+
			"Every replacement pod would join the consumer group as a new static member while the old member keeps "+
			"its partitions until the group's session timeout. Remove the annotation (static membership is off by "+
			"default for such pods) or run the workload as a StatefulSet", AnnotationKafkaStaticMembership, why))
	}
	fits := len(pod.Name) <= maxRocketMQInstanceName // "" (not generated yet) fits: generated names are at most 63
	switch {
	case s.rocketmqInstanceName == nil:
		id.rocketmqInstanceName = fits
	case !*s.rocketmqInstanceName:
	case fits:
		id.rocketmqInstanceName = true
	default:
		errs = append(errs, fmt.Errorf("%s: the pod name has %d characters, source.rocketmq.instance_name takes at most %d",
			AnnotationRocketMQStableInstanceName, len(pod.Name), maxRocketMQInstanceName))
	}
	return id, errors.Join(errs...)
}

// container builds the sidecar container for settings s.
func (in *Injector) container(s settings, id identity) corev1.Container {
	env := []corev1.EnvVar{
		{Name: envPodName, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: envPodNamespace, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		// The admin listener must be reachable by the kubelet probes and by Prometheus.
		{Name: envAdminListen, Value: "0.0.0.0:" + strconv.Itoa(int(s.adminPort))},
		{Name: envDedupPath, Value: DataDir + "/dedup.db"},
	}
	// $(POD_NAME) is expanded by the kubelet because POD_NAME is defined above.
	if id.kafkaGroupInstanceID {
		env = append(env, corev1.EnvVar{Name: envKafkaGroupInstanceID, Value: "$(POD_NAME)"})
	}
	if id.rocketmqInstanceName {
		env = append(env, corev1.EnvVar{Name: envRocketMQInstanceName, Value: "$(POD_NAME)"})
	}
	if s.appPort != 0 {
		base := "http://127.0.0.1:" + strconv.Itoa(int(s.appPort))
		env = append(env, corev1.EnvVar{Name: envAppURL, Value: base + s.appPath})
		if s.appHealthPath != "" {
			env = append(env, corev1.EnvVar{Name: envAppHealthURL, Value: base + s.appHealthPath})
		}
	}
	if s.logLevel != "" {
		env = append(env, corev1.EnvVar{Name: envLogLevel, Value: s.logLevel})
	}
	env = append(env, s.secrets.envVars()...)

	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString(AdminPortName), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			TimeoutSeconds:   2,
			FailureThreshold: failures,
		}
	}
	c := corev1.Container{
		Name:            ContainerName,
		Image:           s.image,
		ImagePullPolicy: in.opts.ImagePullPolicy,
		Args:            []string{"run", "--config", ConfigDir + "/" + configFileName},
		Ports: []corev1.ContainerPort{{
			Name: AdminPortName, ContainerPort: s.adminPort, Protocol: corev1.ProtocolTCP,
		}},
		Env:       env,
		EnvFrom:   s.secrets.envFromSources(),
		Resources: s.resources,
		VolumeMounts: append([]corev1.VolumeMount{
			{Name: DedupVolume, MountPath: DataDir},
			{Name: ConfigVolume, MountPath: ConfigDir, ReadOnly: true},
		}, s.secrets.volumeMounts()...),
		LivenessProbe:  probe("/healthz", 10, 3),
		ReadinessProbe: probe("/readyz", 5, 3),
		// A crash's last log lines become the container's termination message.
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(NonRootUID),
			RunAsGroup:               ptr(NonRootUID),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	if s.mode == ModeNative {
		c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
		// Main containers start once the startup probe succeeded: by default once the
		// sidecar started (/healthz answers only after the configuration was loaded and the
		// dedup store opened), or, with wait-for-ready, once it is ready (/readyz: broker
		// connected). Up to 5 minutes before the kubelet restarts it. parseSettings refused
		// the /readyz gates that cannot pass (app.health_url set by annotation).
		path := "/healthz"
		if s.waitForReady {
			path = "/readyz"
		}
		c.StartupProbe = probe(path, 2, 150)
	}
	return c
}

func hasContainer(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

func hasVolume(vs []corev1.Volume, name string) bool {
	for _, v := range vs {
		if v.Name == name {
			return true
		}
	}
	return false
}

func isOwnedBy(refs []metav1.OwnerReference, group, kind string) bool {
	r := controllerOf(refs)
	return r != nil && r.Kind == kind && strings.SplitN(r.APIVersion, "/", 2)[0] == group
}

// controllerOf returns the controller ownerReference (there is at most one), or nil.
func controllerOf(refs []metav1.OwnerReference) *metav1.OwnerReference {
	for i := range refs {
		if refs[i].Controller != nil && *refs[i].Controller {
			return &refs[i]
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
