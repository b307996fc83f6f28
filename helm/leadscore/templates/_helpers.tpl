{{- define "leadscore.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "leadscore.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "leadscore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leadscore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "leadscore.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "leadscore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret holding what the chart was given inline (Redis URL, tokens). */}}
{{- define "leadscore.secretName" -}}
{{- include "leadscore.fullname" . -}}
{{- end -}}

{{/* Refuses values that would give a service that cannot or must not start. */}}
{{- define "leadscore.validate" -}}
{{- if and (not .Values.redis.url) (not .Values.redis.existingSecret) -}}
{{- fail "set redis.url (redis://host:6379 or redis+cluster://host:port,host:port) or redis.existingSecret: replicas must share a store" -}}
{{- end -}}
{{- if and (not .Values.auth.tokens) (not .Values.auth.existingSecret) (not .Values.auth.insecure) -}}
{{- fail "set auth.tokens or auth.existingSecret (bearer tokens), or auth.insecure=true to accept unauthenticated calls" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- end -}}

{{/*
The service's config file: the webhook endpoints as [[webhooks]] tables,
each reading its secret from LEADSCORE_WEBHOOK_SECRET_<NAME>.
*/}}
{{- define "leadscore.webhooksToml" -}}
{{- range .Values.webhooks }}
[[webhooks]]
name = {{ .name | quote }}
url = {{ .url | quote }}
events = [{{ range $i, $e := .events }}{{ if $i }}, {{ end }}{{ $e | quote }}{{ end }}]
secret_env = {{ include "leadscore.webhookSecretEnv" .name | quote }}
{{- range $key, $value := .settings }}
{{ $key }} = {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ $value }}{{ end }}
{{- end }}
{{ end }}
{{- end }}

{{/* The variable holding a webhook endpoint's secret. */}}
{{- define "leadscore.webhookSecretEnv" -}}
LEADSCORE_WEBHOOK_SECRET_{{ . | upper | replace "-" "_" }}
{{- end }}
