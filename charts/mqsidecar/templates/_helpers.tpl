{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "mqsidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's objects. */}}
{{- define "mqsidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mqsidecar.injectorName" -}}
{{- printf "%s-injector" (include "mqsidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret holding the webhook's serving key pair (and, Helm-generated, its CA). */}}
{{- define "mqsidecar.tlsSecret" -}}
{{- printf "%s-tls" (include "mqsidecar.injectorName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mqsidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mqsidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mqsidecar.injectorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mqsidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "mqsidecar.injectorLabels" -}}
{{ include "mqsidecar.labels" . }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "mqsidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mqsidecar.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Sidecar mode: "auto" picks native sidecars where the cluster has them (>= 1.29). */}}
{{- define "mqsidecar.sidecarMode" -}}
{{- if ne .Values.sidecar.mode "auto" }}
{{- .Values.sidecar.mode }}
{{- else if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version }}
{{- "native" }}
{{- else }}
{{- "container" }}
{{- end }}
{{- end }}

{{- define "mqsidecar.serviceDNS" -}}
{{- printf "%s.%s.svc" (include "mqsidecar.injectorName" .) .Release.Namespace }}
{{- end }}

{{/* sidecar.secrets.env as the injector's --sidecar-secret-env: NAME=secret/key,... (sorted). */}}
{{- define "mqsidecar.secretEnv" -}}
{{- $items := list }}
{{- range $name, $ref := .Values.sidecar.secrets.env }}
{{- $items = append $items (printf "%s=%s" $name $ref) }}
{{- end }}
{{- join "," $items }}
{{- end }}
