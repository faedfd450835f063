{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "cachecoord.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless overridden or the release already carries the chart name. */}}
{{- define "cachecoord.fullname" -}}
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

{{- define "cachecoord.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "cachecoord.labels" -}}
helm.sh/chart: {{ include "cachecoord.chart" . }}
{{ include "cachecoord.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods. */}}
{{- define "cachecoord.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cachecoord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cachecoord.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cachecoord.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A list of flat tables as TOML array-of-tables entries named `name`. */}}
{{- define "cachecoord.tomlTables" -}}
{{- $name := index . 0 }}
{{- range index . 1 }}

[[{{ $name }}]]
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* Seconds the pod gets after SIGTERM: the drain delay plus the grace period, and a margin. */}}
{{- define "cachecoord.terminationGracePeriodSeconds" -}}
{{- add (div (add .Values.shutdown.drainDelayMs .Values.shutdown.gracePeriodMs) 1000) 10 }}
{{- end }}

{{/*
The port the kubelet probes: the plaintext health port while TLS is on (gRPC probes cannot speak TLS).
*/}}
{{- define "cachecoord.probePort" -}}
{{- if .Values.tls.secret }}{{ .Values.tls.healthPort }}{{ else }}{{ .Values.service.grpcPort }}{{ end }}
{{- end }}
