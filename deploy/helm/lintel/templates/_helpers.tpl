{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "lintel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, plus the chart name unless the release name
already contains it. Truncated to 63 characters.
*/}}
{{- define "lintel.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "lintel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (StatefulSet selectors are immutable).
*/}}
{{- define "lintel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lintel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels.
*/}}
{{- define "lintel.labels" -}}
helm.sh/chart: {{ include "lintel.chart" . }}
{{ include "lintel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: lintel
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The container image reference.
*/}}
{{- define "lintel.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The Secret holding the admin password, or "" when none is used. Fails when both an
existing Secret and a literal value are given (ambiguous).
*/}}
{{- define "lintel.adminSecretName" -}}
{{- if and .Values.adminPassword.existingSecret .Values.adminPassword.value }}
{{- fail "adminPassword: set either adminPassword.existingSecret or adminPassword.value, not both" }}
{{- end }}
{{- if .Values.adminPassword.existingSecret }}
{{- .Values.adminPassword.existingSecret }}
{{- else if .Values.adminPassword.value }}
{{- printf "%s-admin" (include "lintel.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The key inside that Secret.
*/}}
{{- define "lintel.adminSecretKey" -}}
{{- if .Values.adminPassword.existingSecret }}
{{- .Values.adminPassword.existingSecretKey | default "admin-password" }}
{{- else }}
{{- "admin-password" }}
{{- end }}
{{- end }}

{{/*
Helm hands values to templates with every number as float64, so toToml would write
`workers = 2.0`, which Lintel (integer settings only) rejects. This walks a map IN PLACE
(pass a deepCopy) and turns whole-number floats into int64, in nested maps and lists.
Lintel has no fractional settings, so nothing is lost.
*/}}
{{- define "lintel.intify" -}}
{{- $m := . -}}
{{- range $k, $v := $m -}}
{{- if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}
{{- $_ := set $m $k (int64 $v) -}}
{{- end -}}
{{- else if kindIs "map" $v -}}
{{- include "lintel.intify" $v -}}
{{- else if kindIs "slice" $v -}}
{{- $out := list -}}
{{- range $x := $v -}}
{{- if and (kindIs "float64" $x) (eq $x (float64 (int64 $x))) -}}
{{- $out = append $out (int64 $x) -}}
{{- else -}}
{{- if kindIs "map" $x -}}
{{- include "lintel.intify" $x -}}
{{- end -}}
{{- $out = append $out $x -}}
{{- end -}}
{{- end -}}
{{- $_ := set $m $k $out -}}
{{- end -}}
{{- end -}}
{{- end }}
