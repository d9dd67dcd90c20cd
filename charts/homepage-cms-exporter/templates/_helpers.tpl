{{/* Names and labels, as `helm create` makes them. */}}
{{- define "hce.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hce.fullname" -}}
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

{{- define "hce.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hce.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hce.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hce.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hce.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hce.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hce.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}{{ $repo = printf "%s/%s" .Values.image.registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where things are mounted in the container. */}}
{{- define "hce.passwordDir" -}}/etc/homepage-cms-exporter/passwords{{- end }}
{{- define "hce.configDir" -}}/etc/homepage-cms-exporter/config{{- end }}
{{- define "hce.webDir" -}}/etc/homepage-cms-exporter/web{{- end }}
{{- define "hce.tlsDir" -}}/etc/homepage-cms-exporter/tls{{- end }}
{{- define "hce.singleName" -}}default{{- end }}

{{/* The password sources: one entry per database, {name, secret, key} (secret "" = the chart's). */}}
{{- define "hce.passwords" -}}
{{- $out := list }}
{{- if .Values.targets }}
{{- range .Values.targets }}
{{- $ref := .passwordSecret | default dict }}
{{- if $ref.name }}
{{- $out = append $out (dict "name" .name "secret" $ref.name "key" (default "password" $ref.key)) }}
{{- else if .password }}
{{- $out = append $out (dict "name" .name "secret" "" "key" .name) }}
{{- end }}
{{- end }}
{{- else }}
{{- $ref := .Values.config.passwordSecret }}
{{- if $ref.name }}
{{- $out = append $out (dict "name" (include "hce.singleName" .) "secret" $ref.name "key" (default "password" $ref.key)) }}
{{- else if .Values.config.password }}
{{- $out = append $out (dict "name" (include "hce.singleName" .) "secret" "" "key" (include "hce.singleName" .)) }}
{{- end }}
{{- end }}
{{- toYaml (dict "items" $out) }}
{{- end }}

{{- define "hce.webConfigured" -}}
{{- if or .Values.web.tls.enabled .Values.web.basicAuthUsers .Values.web.existingSecret }}true{{ end }}
{{- end }}

{{- define "hce.scheme" -}}
{{- if .Values.web.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The targets file (several databases): URLs and where each password file is mounted. */}}
{{- define "hce.targetsFile" -}}
{{- $dir := include "hce.passwordDir" . }}
{{- $withPassword := dict }}
{{- range (include "hce.passwords" . | fromYaml).items }}{{ $_ := set $withPassword .name true }}{{ end }}
targets:
{{- range .Values.targets }}
  - name: {{ .name | quote }}
    database_url: {{ .databaseUrl | quote }}
    {{- if hasKey $withPassword .name }}
    database_password_file: {{ printf "%s/%s" $dir .name | quote }}
    {{- end }}
    {{- with .locales }}
    locales: {{ toJson . }}
    {{- end }}
    {{- with .mediaStorageQuotaBytes }}
    media_storage_quota_bytes: {{ int64 . }}
    {{- end }}
{{- end }}
{{- end }}

{{- define "hce.webConfigFile" -}}
{{- $cfg := dict }}
{{- if .Values.web.tls.enabled }}
{{- $_ := set $cfg "tls_server_config" (dict "cert_file" (printf "%s/tls.crt" (include "hce.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "hce.tlsDir" .)) "min_version" .Values.web.tls.minVersion) }}
{{- end }}
{{- if .Values.web.basicAuthUsers }}
{{- $_ := set $cfg "basic_auth_users" .Values.web.basicAuthUsers }}
{{- /* The kubelet's probes carry no credentials. */}}
{{- $_ := set $cfg "unauthenticated_paths" (list "/healthz" "/readyz") }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Scrape endpoints for a ServiceMonitor or PodMonitor; `monitor` is its values. One database:
/metrics as `jobName`. Several: /metrics (the process) as `jobName`-exporter and, unless the
Probe scrapes them, one /probe endpoint per target with `instance` set to its name. */}}
{{- define "hce.endpoints" -}}
{{- $root := .root }}
{{- $m := .monitor }}
{{- $targets := $root.Values.targets }}
{{- $job := ternary (printf "%s-exporter" $m.jobName) $m.jobName (gt (len $targets) 0) }}
{{- $endpoints := list (dict "path" "/metrics" "job" $job "target" "") }}
{{- if and $targets (not $root.Values.probe.enabled) }}
{{- range $targets }}
{{- $endpoints = append $endpoints (dict "path" "/probe" "job" $m.jobName "target" .name) }}
{{- end }}
{{- end }}
{{- range $endpoints }}
- port: http
  path: {{ .path }}
  scheme: {{ include "hce.scheme" $root }}
  interval: {{ $m.interval }}
  scrapeTimeout: {{ $m.scrapeTimeout }}
  {{- if .target }}
  params:
    target: [{{ .target | quote }}]
  {{- end }}
  relabelings:
    - targetLabel: job
      replacement: {{ .job | quote }}
      action: replace
    {{- if .target }}
    - targetLabel: instance
      replacement: {{ .target | quote }}
      action: replace
    {{- end }}
    {{- with $m.relabelings }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $m.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $m.tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $m.basicAuth }}
  basicAuth:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
