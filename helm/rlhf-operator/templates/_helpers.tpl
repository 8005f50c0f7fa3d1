{{/* Chart name, truncated to a DNS label. */}}
{{- define "rlhf-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds it. */}}
{{- define "rlhf-operator.fullname" -}}
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

{{- define "rlhf-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "rlhf-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rlhf-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlhf-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rlhf-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rlhf-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference; tag defaults to the chart's appVersion. */}}
{{- define "rlhf-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The default trainer image passed as --trainer-image. */}}
{{- define "rlhf-operator.trainerImage" -}}
{{- with .Values.operator.trainerImage }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) }}
{{- end }}
{{- end }}

{{/* The operator's command line, one quoted list item per argument. */}}
{{- define "rlhf-operator.args" -}}
- operator
- {{ printf "--metrics-port=%d" (int .Values.operator.metricsPort) | quote }}
- {{ printf "--liveness-port=%d" (int .Values.operator.livenessPort) | quote }}
- {{ printf "--trainer-image=%s" (include "rlhf-operator.trainerImage" .) | quote }}
{{- range .Values.operator.watchNamespaces }}
- {{ printf "--namespace=%s" . | quote }}
{{- end }}
{{- with .Values.operator.peering }}
- {{ printf "--peering=%s" . | quote }}
{{- end }}
{{- if eq .Values.operator.logLevel "debug" }}
- --verbose
{{- end }}
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The metrics Service (also what the ServiceMonitor and `helm test` reach). */}}
{{- define "rlhf-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "rlhf-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's rules on RLHFJobs and their children (a ClusterRole's or a watched namespace's Role). */}}
{{- define "rlhf-operator.jobRules" -}}
- apiGroups: ["rlhf.io"]
  resources: ["rlhfjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["rlhf.io"]
  resources: ["rlhfjobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["rlhf.io"]
  resources: ["rlhfjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts", "secrets"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# KubeRay's submitter Job carries only KubeRay's labels: the operator adds the job's (reconciler.py).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["patch"]
# RLHFPipeline: read and watched (kopf, resync), patched (kopf's progress annotations), its status
# written; each stage's RLHFJob is created by the operator (owned by the pipeline).
- apiGroups: ["rlhf.io"]
  resources: ["rlhfpipelines"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["rlhf.io"]
  resources: ["rlhfpipelines/status"]
  verbs: ["get", "patch"]
- apiGroups: ["rlhf.io"]
  resources: ["rlhfpipelines/finalizers"]
  verbs: ["update"]
- apiGroups: ["rlhf.io"]
  resources: ["rlhfjobs"]
  verbs: ["create"]
{{- end }}

{{/* A job pod's scrape labels from the pod's own metadata: its namespace and its rlhf.io/job label. */}}
{{- define "rlhf-operator.jobPodRelabelings" -}}
- sourceLabels: [__meta_kubernetes_namespace]
  targetLabel: namespace
  action: replace
- sourceLabels: [__meta_kubernetes_pod_label_rlhf_io_job]
  targetLabel: job
  action: replace
{{- end }}
