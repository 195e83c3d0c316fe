{{- define "orderflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "orderflow.operatorName" -}}
{{- printf "%s-operator" (include "orderflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "orderflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "orderflow.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "orderflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "orderflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: orderflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "orderflow.selectorLabels" . }}
{{- end -}}

{{- define "orderflow.selectorLabels" -}}
app.kubernetes.io/name: orderflow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The served namespaces, comma-separated ("" when all are served). */}}
{{- define "orderflow.watchNamespaces" -}}
{{- if not .Values.operator.watchAllNamespaces -}}
{{- join "," (default (list .Release.Namespace) .Values.operator.watchNamespaces) -}}
{{- end -}}
{{- end -}}
