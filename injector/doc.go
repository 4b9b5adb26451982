// Package injector is the Kubernetes mutating admission webhook that adds the mqsidecar
// container to pods annotated mqsidecar.io/inject: "true" (the mqsidecar-injector command,
// cmd/mqsidecar-injector; the sidecar binary does not link this package).
//
// Contract:
//   - Handler answers every well-formed admission.k8s.io/v1 AdmissionReview. It allows the
//     object unchanged unless it is a Pod (or a StatefulSet) being created whose pod template
//     opted in with mqsidecar.io/inject; then it returns a JSON patch (RFC 6902) that adds the
//     sidecar. Other kinds, other operations, unannotated pods and pods that already carry the
//     sidecar are allowed without a patch, so the webhook is idempotent.
//   - A pod that opted in but whose mqsidecar.io/* annotations are invalid is denied, with a
//     message that names every bad annotation and what is wrong with it. This is deliberate:
//     admitting it without the sidecar would start an application that silently consumes
//     nothing, the exact opposite of what its owner asked for. Problems that do not change
//     what gets injected are returned as admission warnings instead.
//   - Anything that is not the pod owner's fault (an undecodable object, a bug) never denies:
//     the object is allowed unchanged with a warning and an error log line, or the request
//     fails with HTTP 500 and the webhook's failurePolicy (Ignore by default) decides.
//   - The webhook never calls the Kubernetes API: it only transforms the object it is given.
//     It therefore needs no RBAC and has no side effects (sideEffects: None, dry-run safe).
//
// By default the sidecar is a native sidecar (an init container with restartPolicy: Always,
// Kubernetes >= 1.29) with a startup probe; mqsidecar.io/sidecar-mode: container injects a
// regular container for older clusters. The app's containers start once that probe passes:
// /healthz (the sidecar started: configuration loaded, dedup store open) unless
// mqsidecar.io/wait-for-ready asks for /readyz (broker connected). A gate that could never
// pass (/readyz while the sidecar waits for the app's health URL) is refused at injection. The dedup store lives on an emptyDir, or on a
// per-pod PersistentVolumeClaim for StatefulSets: when a StatefulSet is created, the webhook
// adds a volumeClaimTemplate named mqsidecar-dedup, and the StatefulSet controller then adds
// that volume to each pod, which the pod mutation mounts instead of an emptyDir.
//
// Secrets reach the sidecar only as references the kubelet resolves (env secretKeyRef,
// envFrom secretRef, read-only Secret volumes under SecretsDir), from the injector's
// defaults or the mqsidecar.io/secret-* annotations; no secret value passes through the
// webhook or into a ConfigMap.
//
// The sidecar's identity follows the pod name where that is safe: Kafka static membership
// (group_instance_id = pod name) only for pods whose name is stable, i.e. StatefulSet pods
// (a replaced Deployment pod never comes back, and its static member would hold its
// partitions until the session timeout); the RocketMQ instance name for every pod (the
// client ID also holds the pod IP, so a replaced pod is a new client anyway). See
// podIdentity.
//
// CertReloader serves the webhook's TLS certificate and picks up a rotated key pair
// (cert-manager, a re-rendered Secret) without a restart.
package injector
