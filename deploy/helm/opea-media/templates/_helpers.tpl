{{/*
Expand the name of the chart.
*/}}
{{- define "opea-media.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (GenAIInfra's rule): the release name when it contains
the chart's name, else release-chart; 63 characters at most (DNS names).
*/}}
{{- define "opea-media.fullname" -}}
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

{{/*
The name of one service's objects (Deployment, Service, ConfigMap, HPA, PDB): fullname-SERVICE.
Called with (list $ "text2image").
*/}}
{{- define "opea-media.componentName" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- printf "%s-%s" (include "opea-media.fullname" $root | trunc 52 | trimSuffix "-") $name }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "opea-media.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of the release's objects.
*/}}
{{- define "opea-media.commonLabels" -}}
helm.sh/chart: {{ include "opea-media.chart" . }}
app.kubernetes.io/name: {{ include "opea-media.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of one service's objects; called with (list $ "text2image").
*/}}
{{- define "opea-media.labels" -}}
{{- $root := index . 0 }}
{{- include "opea-media.commonLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Selector labels of one service's pods; called with (list $ "text2image").
*/}}
{{- define "opea-media.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "opea-media.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "opea-media.serviceAccountName" -}}
{{- if .Values.global.sharedSAName }}
{{- .Values.global.sharedSAName }}
{{- else if .Values.serviceAccount.create }}
{{- default (include "opea-media.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
One service's settings as YAML (read back with fromYaml): the shared values, each replaced by the
service block's own where it has one; autoscaling and podDisruptionBudget merged key by key.
(Sprig's merge functions are not used: they treat false and 0 as unset.)
*/}}
{{- define "opea-media.settings" -}}
{{- $root := index . 0 }}
{{- $block := index $root.Values (index . 1) }}
{{- $merged := list "autoscaling" "podDisruptionBudget" }}
{{- $out := dict }}
{{- range $key := list "replicaCount" "resources" "nodeSelector" "tolerations" "affinity" "gpus" "extraEnv" }}
{{- $_ := set $out $key (index $root.Values $key) }}
{{- end }}
{{- range $key := $merged }}
{{- $_ := set $out $key (deepCopy (index $root.Values $key)) }}
{{- end }}
{{- range $key, $value := $block }}
{{- if and (has $key $merged) (kindIs "map" $value) }}
{{- range $k, $v := $value }}
{{- $_ := set (index $out $key) $k $v }}
{{- end }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
The image, repository:tag (tag: the chart's appVersion when empty).
*/}}
{{- define "opea-media.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The Secret the chart makes for inline values (global.HUGGINGFACEHUB_API_TOKEN, apiKey.value).
*/}}
{{- define "opea-media.secretName" -}}
{{- printf "%s-secrets" (include "opea-media.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "opea-media.inlineHfToken" -}}
{{- if not .Values.hfToken.existingSecret }}
{{- .Values.global.HUGGINGFACEHUB_API_TOKEN | default .Values.global.HF_TOKEN | default "" }}
{{- end }}
{{- end }}

{{- define "opea-media.inlineApiKey" -}}
{{- if not .Values.apiKey.existingSecret }}
{{- .Values.apiKey.value | default "" }}
{{- end }}
{{- end }}

{{/*
env entries for the secrets, each a secretKeyRef (nothing when none is configured).
*/}}
{{- define "opea-media.secretEnv" -}}
{{- if .Values.hfToken.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hfToken.existingSecret }}
      key: {{ .Values.hfToken.key }}
{{- else if include "opea-media.inlineHfToken" . }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "opea-media.secretName" . }}
      key: HF_TOKEN
{{- end }}
{{- include "opea-media.apiKeyEnv" . }}
{{- if .Values.jobs.postgresUrlSecret }}
- name: OPEA_MEDIA_JOBS_STORE
  valueFrom:
    secretKeyRef:
      name: {{ .Values.jobs.postgresUrlSecret }}
      key: {{ .Values.jobs.postgresUrlKey }}
{{- end }}
{{- end }}

{{- define "opea-media.apiKeyEnv" -}}
{{- if .Values.apiKey.existingSecret }}
- name: OPEA_MEDIA_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.apiKey.existingSecret }}
      key: {{ .Values.apiKey.key }}
{{- else if include "opea-media.inlineApiKey" . }}
- name: OPEA_MEDIA_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "opea-media.secretName" . }}
      key: OPEA_MEDIA_API_KEY
{{- end }}
{{- end }}

{{/*
The chart's refusals, checked once per render.
*/}}
{{- define "opea-media.validate" -}}
{{- if not (or .Values.text2image.enabled .Values.image2video.enabled) }}
{{- fail "enable text2image, image2video or both (text2image.enabled / image2video.enabled)" }}
{{- end }}
{{- $needed := add (int .Values.preStopSleepSeconds) (int .Values.config.shutdownGrace) 5 }}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be more than preStopSleepSeconds + config.shutdownGrace + 5 s to close connections (%d): else the kubelet kills requests still draining" (int .Values.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- if and .Values.global.modelUsePVC .Values.global.modelUseHostPath }}
{{- fail "set one of global.modelUsePVC and global.modelUseHostPath, not both" }}
{{- end }}
{{- if not (has .Values.accelDevice (list "" "nvidia")) }}
{{- fail (printf "accelDevice must be \"\" (CPU) or \"nvidia\", not %q" .Values.accelDevice) }}
{{- end }}
{{- $sharedData := or .Values.jobs.dataPVC .Values.global.modelUsePVC .Values.global.modelUseHostPath }}
{{- if and .Values.jobs.postgresUrlSecret (not $sharedData) }}
{{- range $name := list "text2image" "image2video" }}
{{- $s := include "opea-media.settings" (list $ $name) | fromYaml }}
{{- if and (index $.Values $name).enabled (or $s.autoscaling.enabled (gt (int $s.replicaCount) 1)) }}
{{- fail (printf "%s runs several pods on the shared PostgreSQL queue, but each would keep the results it makes in its own emptyDir: set jobs.dataPVC (a ReadWriteMany claim) or global.modelUsePVC" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
