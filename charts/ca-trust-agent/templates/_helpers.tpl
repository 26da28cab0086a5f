{{/* The labels kustomize adds to every object in manifests/ (managed-by says who applied it). */}}
{{- define "ca-trust-agent.labels" -}}
app.kubernetes.io/name: ca-trust-agent
app.kubernetes.io/part-of: ca-trust-agent
app.kubernetes.io/component: node-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The selector: immutable on a DaemonSet, so only the name (as in manifests/). */}}
{{- define "ca-trust-agent.selector" -}}
app.kubernetes.io/name: ca-trust-agent
{{- end }}

{{/* Does the policy take a CA from ClusterTrustBundles? Then (only then) the RBAC to read them. */}}
{{- define "ca-trust-agent.usesClusterTrustBundles" -}}
{{- range .Values.policy.registries }}{{ if and .caFrom .caFrom.clusterTrustBundle }}yes{{ end }}{{ end }}
{{- with .Values.policy.interception }}{{ if and .caFrom .caFrom.clusterTrustBundle }}yes{{ end }}{{ end }}
{{- end }}
