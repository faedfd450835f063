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

{{/*
The configuration as a map: what the chart's values imply (ports, mounted files, the policy table, …), with
config.settings merged over it (config.settings wins, table by table and key by key; a list replaces a list).
*/}}
{{- define "cachecoord.configMap" -}}
{{- $config := include "cachecoord.chartConfig" . | fromYaml }}
{{- if hasKey $config "Error" }}{{ fail (printf "cachecoord chart: %s" $config.Error) }}{{ end }}
{{- $config = mergeOverwrite $config (deepCopy (.Values.config.settings | default dict)) }}
{{- toJson $config }}
{{- end }}

{{/* The configuration file: the rendered TOML, then the deprecated config.extraToml. */}}
{{- define "cachecoord.configFile" -}}
# Rendered by the cachecoord chart: the settings its values imply, then config.settings merged over them.
# Credentials are files mounted from Secrets (*_file settings).
{{- include "cachecoord.configToml" . }}
{{- with .Values.config.extraToml }}
{{ "" }}
{{- . | nindent 0 }}
{{- end }}
{{- end }}

{{/* The configuration as TOML. */}}
{{- define "cachecoord.configToml" -}}
{{- include "cachecoord.toml" (list "" (include "cachecoord.configMap" . | fromJson)) }}
{{- end }}

{{/* The settings the chart's own values imply, as YAML (values written as JSON, so text stays text). */}}
{{- define "cachecoord.chartConfig" -}}
{{- $keys := dict }}
{{- if .Values.redis.existingSecret }}{{ $keys = .Values.redis.existingSecretKeys }}{{ end }}
listen_addr: {{ printf "0.0.0.0:%v" .Values.service.grpcPort | toJson }}
log_level: {{ .Values.config.logLevel | toJson }}
store:
  {{- if $keys.url }}
  redis_url_file: /etc/cachecoord/secrets/redis/url
  {{- else }}
  redis_url: {{ .Values.redis.url | toJson }}
  {{- end }}
  {{- if $keys.username }}
  redis_username_file: /etc/cachecoord/secrets/redis/username
  {{- else if .Values.redis.username }}
  redis_username: {{ .Values.redis.username | toJson }}
  {{- end }}
  {{- if $keys.password }}
  redis_password_file: /etc/cachecoord/secrets/redis/password
  {{- end }}
  {{- if .Values.redis.tls.caSecret }}
  redis_tls_ca_file: /etc/cachecoord/secrets/redis-ca/ca.crt
  {{- end }}
auth:
  enabled: {{ .Values.auth.enabled }}
  {{- if .Values.auth.enabled }}
  tokens_file: /etc/cachecoord/auth/tokens.toml
  {{- end }}
{{- if .Values.tls.secret }}
tls:
  cert_file: /etc/cachecoord/tls/tls.crt
  key_file: /etc/cachecoord/tls/tls.key
  health_listen_addr: {{ printf "0.0.0.0:%v" .Values.tls.healthPort | toJson }}
  {{- if .Values.tls.clientAuth }}
  client_ca_file: /etc/cachecoord/tls/ca.crt
  {{- end }}
{{- end }}
{{- if .Values.encryption.keysSecret }}
encryption:
  keys_dir: /etc/cachecoord/keys
  active_key: {{ .Values.encryption.activeKey | toJson }}
{{- end }}
telemetry:
  metrics_addr: {{ printf "0.0.0.0:%v" .Values.service.metricsPort | toJson }}
  log_json: {{ .Values.config.logJson }}
  trace_sampling_ratio: {{ .Values.config.traceSamplingRatio | toJson }}
  {{- with .Values.config.otlpEndpoint }}
  otlp_endpoint: {{ . | toJson }}
  {{- end }}
connections:
  max_age_secs: {{ .Values.connections.maxAgeSecs | int64 }}
  max_age_grace_secs: {{ .Values.connections.maxAgeGraceSecs | int64 }}
shutdown:
  drain_delay_ms: {{ .Values.shutdown.drainDelayMs | int64 }}
  grace_period_ms: {{ .Values.shutdown.gracePeriodMs | int64 }}
near_cache:
  max_bytes: {{ .Values.config.nearCacheMaxBytes | int64 }}
{{- if .Values.postgres.existingSecret }}
postgres:
  url_file: /etc/cachecoord/secrets/postgres/url
{{- else if .Values.postgres.url }}
postgres:
  url: {{ .Values.postgres.url | toJson }}
{{- end }}
policies: {{ .Values.config.policies | toJson }}
loaders: {{ .Values.config.loaders | toJson }}
{{- end }}

{{/*
A map as TOML, under the dotted table name `prefix` ("" at the top): its plain keys first, then its tables, then
its arrays of tables (a list whose first item is a map). Values are written as JSON, which TOML reads alike for
strings, numbers, booleans and arrays of them; null values are left out.
*/}}
{{- define "cachecoord.toml" -}}
{{- $prefix := index . 0 }}
{{- $table := index . 1 }}
{{- range $key, $value := $table }}
{{- $tables := or (kindIs "map" $value) (and (kindIs "slice" $value) (gt (len $value) 0) (kindIs "map" (first $value))) }}
{{- if and (not $tables) (not (kindIs "invalid" $value)) }}
{{ include "cachecoord.tomlKey" $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $key, $value := $table }}
{{- if kindIs "map" $value }}
{{- $name := include "cachecoord.tomlName" (list $prefix $key) }}

[{{ $name }}]
{{- include "cachecoord.toml" (list $name $value) }}
{{- end }}
{{- end }}
{{- range $key, $value := $table }}
{{- if and (kindIs "slice" $value) (gt (len $value) 0) (kindIs "map" (first $value)) }}
{{- $name := include "cachecoord.tomlName" (list $prefix $key) }}
{{- range $value }}

[[{{ $name }}]]
{{- include "cachecoord.toml" (list $name .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* A TOML key: bare when it can be, quoted otherwise. */}}
{{- define "cachecoord.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* The dotted name of table `key` under `prefix`. */}}
{{- define "cachecoord.tomlName" -}}
{{- $key := include "cachecoord.tomlKey" (index . 1) }}
{{- if index . 0 }}{{ index . 0 }}.{{ $key }}{{ else }}{{ $key }}{{ end }}
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
{{- if .Values.redis.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/cachecoord/secrets/redis-ca
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod's volumes but the `config` one, which each pod names itself (the hook has its own ConfigMap). */}}
{{- define "cachecoord.volumes" -}}
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
{{- with .Values.redis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ . }}
    defaultMode: {{ $.Values.secretDefaultMode }}
    items:
      - key: {{ $.Values.redis.tls.caKey }}
        path: ca.crt
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
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
