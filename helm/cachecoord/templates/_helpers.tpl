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

{{/*
The configuration, tokens and credentials, mounted read-only; shared by the Deployment and the check-config hook.
Secrets are mounted as directories (no subPath) so updates reach the pod, with `secretDefaultMode` (0440: the
files belong to root and the pod's fsGroup, so the unprivileged user reads them through its group).
*/}}
{{- define "cachecoord.volumeMounts" -}}
- name: config
  mountPath: /etc/cachecoord/config
  readOnly: true
{{- if .Values.auth.enabled }}
- name: tokens
  mountPath: /etc/cachecoord/auth
  readOnly: true
{{- end }}
{{- if .Values.tls.secret }}
- name: tls
  mountPath: /etc/cachecoord/tls
  readOnly: true
{{- end }}
{{- if .Values.encryption.keysSecret }}
- name: keys
  mountPath: /etc/cachecoord/keys
  readOnly: true
{{- end }}
{{- if include "cachecoord.redisSecretItems" . }}
- name: redis-credentials
  mountPath: /etc/cachecoord/secrets/redis
  readOnly: true
{{- end }}
{{- if .Values.postgres.existingSecret }}
- name: postgres-credentials
  mountPath: /etc/cachecoord/secrets/postgres
  readOnly: true
{{- end }}
{{- end }}

{{- define "cachecoord.volumes" -}}
- name: config
  configMap:
    name: {{ include "cachecoord.fullname" . }}
{{- if .Values.auth.enabled }}
# Re-read when it changes: Secret updates reach a directory mount.
- name: tokens
  secret:
    secretName: {{ .Values.auth.tokensSecret }}
    defaultMode: {{ .Values.secretDefaultMode }}
{{- end }}
{{- if .Values.tls.secret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secret }}
    defaultMode: {{ .Values.secretDefaultMode }}
{{- end }}
{{- if .Values.encryption.keysSecret }}
- name: keys
  secret:
    secretName: {{ .Values.encryption.keysSecret }}
    defaultMode: {{ .Values.secretDefaultMode }}
{{- end }}
{{- with include "cachecoord.redisSecretItems" . }}
- name: redis-credentials
  secret:
    secretName: {{ $.Values.redis.existingSecret }}
    defaultMode: {{ $.Values.secretDefaultMode }}
    items:
      {{- . | nindent 6 }}
{{- end }}
{{- with .Values.postgres.existingSecret }}
- name: postgres-credentials
  secret:
    secretName: {{ . }}
    defaultMode: {{ $.Values.secretDefaultMode }}
    items:
      - key: {{ $.Values.postgres.existingSecretKey }}
        path: url
{{- end }}
{{- end }}

{{/* The keys of redis.existingSecret that are mounted, as Secret volume items (empty when none). */}}
{{- define "cachecoord.redisSecretItems" -}}
{{- if .Values.redis.existingSecret }}
{{- range $file, $key := .Values.redis.existingSecretKeys }}
{{- if $key }}
- key: {{ $key }}
  path: {{ $file }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
