{{/* Chart name. */}}
{{- define "crm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; per-service resources append -<service>. */}}
{{- define "crm.fullname" -}}
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

{{- define "crm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every resource. */}}
{{- define "crm.commonLabels" -}}
helm.sh/chart: {{ include "crm.chart" . }}
app.kubernetes.io/name: {{ include "crm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crm
{{- end }}

{{/* Context for the per-service helpers: (dict "root" $ "name" $name). */}}
{{- define "crm.componentName" -}}
{{- printf "%s-%s" (include "crm.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "crm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "crm.labels" -}}
{{ include "crm.commonLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "crm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "crm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Deep-merges .src into the map .dst in place: maps key by key, anything else replaced.
(sprig's merge/mergeOverwrite cannot override true with false, hence this.)
*/}}
{{- define "crm.merge" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- $current := get $dst $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $current) }}
{{- include "crm.merge" (dict "dst" $current "src" $value) }}
{{- else }}
{{- $_ := set $dst $key (deepCopy $value) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fills .out with a service's effective settings: .Values.defaults overridden by
.Values.services.<name>. Usage:
  {{- $cfg := dict }}
  {{- include "crm.config" (dict "root" $ "name" $name "out" $cfg) }}
*/}}
{{- define "crm.config" -}}
{{- include "crm.merge" (dict "dst" .out "src" .root.Values.defaults) }}
{{- include "crm.merge" (dict "dst" .out "src" (get .root.Values.services .name)) }}
{{- end }}

{{/* Non-secret environment of one service: the data of its ConfigMap. */}}
{{- define "crm.configData" -}}
{{- $root := .root }}
{{- $cfg := dict }}
{{- include "crm.config" (dict "root" $root "name" .name "out" $cfg) }}
{{- $topics := $root.Values.kafka.topics }}
{{- if gt (int $topics.minInsyncReplicas) (int $topics.replicationFactor) }}
{{- fail "kafka.topics.minInsyncReplicas cannot exceed kafka.topics.replicationFactor: every acks=all write would be refused" }}
{{- end }}
{{- $data := dict
  "CRM_KAFKA_BOOTSTRAP_SERVERS" $root.Values.kafka.bootstrapServers
  "CRM_KAFKA_SECURITY_PROTOCOL" $root.Values.kafka.securityProtocol
  "CRM_TOPIC_PREFIX" $root.Values.topicPrefix
  "CRM_KAFKA_CREATE_TOPICS" (toString $topics.create)
  "CRM_KAFKA_TOPIC_PARTITIONS" (toString $topics.partitions)
  "CRM_KAFKA_REPLICATION_FACTOR" (toString $topics.replicationFactor)
  "CRM_KAFKA_MIN_INSYNC_REPLICAS" (toString $topics.minInsyncReplicas)
  "CRM_KAFKA_TOPIC_RETENTION_MS" (toString (int64 $topics.retentionMs))
  "CRM_KAFKA_DLQ_RETENTION_MS" (toString (int64 $topics.dlqRetentionMs))
  "CRM_COMPANY_CURRENCY" $root.Values.companyCurrency
  "CRM_MONGO_DATABASE" (default (printf "crm_%s" .name) $cfg.mongoDatabase)
  "CRM_HTTP_HOST" "0.0.0.0"
  "CRM_HTTP_PORT" "8000"
  "CRM_LOG_LEVEL" $root.Values.logLevel
  "OTEL_SERVICE_NAME" (printf "crm-%s" .name)
}}
{{- with $root.Values.kafka.sasl.mechanism }}
{{- $_ := set $data "CRM_KAFKA_SASL_MECHANISM" . }}
{{- $_ := set $data "CRM_KAFKA_SASL_USERNAME" $root.Values.kafka.sasl.username }}
{{- end }}
{{- if $root.Values.kafka.ssl.caSecret }}
{{- $_ := set $data "CRM_KAFKA_SSL_CAFILE" (printf "/etc/crm/kafka-ca/%s" $root.Values.kafka.ssl.caKey) }}
{{- end }}
{{- with $root.Values.otel.endpoint }}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . }}
{{- end }}
{{- range $key, $value := $cfg.env }}
{{- $_ := set $data $key (toString $value) }}
{{- end }}
{{- range $key, $value := $data }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
