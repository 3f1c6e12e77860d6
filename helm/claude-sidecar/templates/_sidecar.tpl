{{/*
Named templates that put the sidecar into a pod. This chart's Deployment uses them, and so
can any chart that depends on this one, passing the subchart's own context:

  {{- $sidecar := index .Subcharts "claude-sidecar" }}
  metadata:
    annotations:                 # empty when rollOnConfigChange is false
      {{- include "claude-sidecar.podAnnotations" $sidecar | nindent 8 }}
  spec:
    terminationGracePeriodSeconds: {{ include "claude-sidecar.terminationGracePeriodSeconds" $sidecar }}
    containers:                  # initContainers when nativeSidecar is true
      {{- include "claude-sidecar.container" $sidecar | nindent 8 }}
    volumes:
      {{- include "claude-sidecar.volumes" $sidecar | nindent 8 }}
*/}}

{{/*
Pod annotations: the config checksum rolls pods when the config changes. A Secret the chart
renders (secrets.create) rolls them too when its data changes: env vars are read once, at
start, so nothing else brings a changed key to a running pod.
*/}}
{{- define "claude-sidecar.podAnnotations" -}}
{{- if .Values.rollOnConfigChange }}
checksum/claude-sidecar-config: {{ .Values.config | sha256sum }}
{{- end }}
{{- if .Values.secrets.create }}
checksum/claude-sidecar-secret: {{ .Values.secrets.data | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/* Pod volumes the sidecar container mounts (its config, /tmp, and extraVolumes). */}}
{{- define "claude-sidecar.volumes" -}}
# The whole directory (no subPath), so in-place ConfigMap edits reach the file.
- name: claude-sidecar-config
  configMap:
    name: {{ include "claude-sidecar.configMapName" . | quote }}
    items:
      - {key: sidecar.yaml, path: sidecar.yaml}
# The only writable path: the root filesystem is read-only.
- name: claude-sidecar-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Environment: secrets by reference, OTel with pod identity from the downward API. */}}
{{- define "claude-sidecar.env" -}}
- name: SIDECAR_CONFIG
  value: /etc/claude-sidecar/sidecar.yaml
{{- $secretEnv := list }}
{{- if include "claude-sidecar.hasSecret" . }}
{{- $secretEnv = .Values.secrets.env }}
{{- end }}
{{- range $secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "claude-sidecar.secretName" $ | quote }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
- name: K8S_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: K8S_NAMESPACE_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: K8S_NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: OTEL_SERVICE_NAME
  value: {{ default (include "claude-sidecar.fullname" .) .Values.otel.serviceName | quote }}
{{- $attributes := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.namespace.name=$(K8S_NAMESPACE_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" "k8s.container.name=claude-sidecar" }}
{{- range $key, $value := .Values.otel.resourceAttributes }}
{{- /* The SDK percent-decodes values: encode what would split or decode wrongly. */}}
{{- $attributes = append $attributes (printf "%s=%s" $key ($value | toString | replace "%" "%25" | replace "," "%2C")) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "claude-sidecar.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: sidecar-admin
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" }}
{{- if hasKey $.probe $key }}
{{ $key }}: {{ get $.probe $key }}
{{- end }}
{{- end }}
{{- end }}

{{/* The sidecar container, as one list item (for containers, or initContainers if native). */}}
{{- define "claude-sidecar.container" -}}
{{- include "claude-sidecar.checkListeners" . }}
{{- include "claude-sidecar.checkNoSecretsInConfig" . }}
{{- include "claude-sidecar.checkSecrets" . }}
{{- include "claude-sidecar.checkConfigEnv" . }}
{{- include "claude-sidecar.checkKubeVersion" . }}
{{- include "claude-sidecar.checkFiles" . -}}
- name: claude-sidecar
  image: {{ include "claude-sidecar.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  ports:
    - {name: sidecar-http, containerPort: {{ .Values.ports.http }}, protocol: TCP}
    - {name: sidecar-admin, containerPort: {{ .Values.ports.admin }}, protocol: TCP}
  env:
    {{- include "claude-sidecar.env" . | nindent 4 }}
  startupProbe:
    {{- include "claude-sidecar.probe" (dict "probe" .Values.probes.startup) | nindent 4 }}
  livenessProbe:
    {{- include "claude-sidecar.probe" (dict "probe" .Values.probes.liveness) | nindent 4 }}
  readinessProbe:
    {{- include "claude-sidecar.probe" (dict "probe" .Values.probes.readiness) | nindent 4 }}
  lifecycle:
    preStop:
      # Endpoints controllers and proxies drop the pod while this runs; only then SIGTERM.
      exec:
        command: ["sleep", "{{ .Values.preStopSleepSeconds }}"]
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  volumeMounts:
    - {name: claude-sidecar-config, mountPath: /etc/claude-sidecar, readOnly: true}
    - {name: claude-sidecar-tmp, mountPath: /tmp}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
