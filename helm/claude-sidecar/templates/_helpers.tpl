{{/* Names, labels and checks shared by every template. */}}

{{- define "claude-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "claude-sidecar.fullname" -}}
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

{{- define "claude-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "claude-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "claude-sidecar.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{- define "claude-sidecar.labels" -}}
helm.sh/chart: {{ include "claude-sidecar.chart" . }}
{{ include "claude-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "claude-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "claude-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "claude-sidecar.configMapName" -}}
{{- printf "%s-config" (include "claude-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "claude-sidecar.secretName" -}}
{{- default (include "claude-sidecar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* "true" when the env of secrets.env has a Secret to come from (existing or created). */}}
{{- define "claude-sidecar.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.create }}true{{ end }}
{{- end }}

{{/*
Fail when the config needs a Secret the chart was not given: real Claude needs its API
key, and every ${VAR} of a required secrets.env entry must come from somewhere. With
create, secrets.data must hold every required key.
*/}}
{{- define "claude-sidecar.checkSecrets" -}}
{{- $config := include "claude-sidecar.parsedConfig" . | fromYaml }}
{{- $baseUrl := (get ($config.claude | default dict) "base_url") | default "builtin:fake" }}
{{- if and .Values.secrets.existingSecret .Values.secrets.create }}
{{- fail "secrets: set existingSecret or create, not both" }}
{{- end }}
{{- if not (include "claude-sidecar.hasSecret" .) }}
{{- if ne $baseUrl "builtin:fake" }}
{{- fail (printf "claude.base_url is %q: the sidecar needs its API key from a Secret. Set secrets.existingSecret to a Secret you created (kubectl create secret generic NAME --from-literal=anthropic-api-key=...), or secrets.create=true with secrets.data for a trial" $baseUrl) }}
{{- end }}
{{- /* Read from the parsed config, as checkConfigEnv does: a comment or a $${ escape reads nothing. */}}
{{- $text := include "claude-sidecar.parsedConfig" . | replace "$$" "" }}
{{- range .Values.secrets.env }}
{{- if and (not .optional) (contains (printf "${%s}" .name) $text) }}
{{- fail (printf "config reads ${%s} (secrets.env key %q) but no Secret is given: set secrets.existingSecret, or secrets.create=true with secrets.data" .name .key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.secrets.create }}
{{- range .Values.secrets.env }}
{{- if and (not .optional) (not (hasKey $.Values.secrets.data .key)) }}
{{- fail (printf "secrets.create: secrets.data has no key %q (for %s)" .key .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fail on what `sidecar check` would refuse in the env the pod gets, so the pod does not
crash-loop on it: real Claude without claude.api_key, and a ${VAR} (no :-default) that no
env entry of the sidecar container provides (secrets.env maps only the names it lists).
Read from the parsed config, so a ${VAR} in a YAML comment does not count; $$ is a literal $.
*/}}
{{- define "claude-sidecar.checkConfigEnv" -}}
{{- $config := include "claude-sidecar.parsedConfig" . | fromYaml }}
{{- $claude := $config.claude | default dict }}
{{- $baseUrl := (get $claude "base_url") | default "builtin:fake" }}
{{- if and (ne $baseUrl "builtin:fake") (not (trim (toString ((get $claude "api_key") | default "")))) }}
{{- fail (printf "config claude.api_key is needed when claude.base_url is %q (not builtin:fake): write api_key: \"${ANTHROPIC_API_KEY}\" (mapped from the Secret in secrets.env); the sidecar would refuse the config and the pod crash-loop" $baseUrl) }}
{{- end }}
{{- $names := dict }}
{{- range include "claude-sidecar.env" . | fromYamlArray }}
{{- $_ := set $names (toString .name) true }}
{{- end }}
{{- $text := include "claude-sidecar.parsedConfig" . | replace "$$" "" }}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" $text -1 }}
{{- $name := trimSuffix "}" (trimPrefix "${" .) }}
{{- if not (hasKey $names $name) }}
{{- fail (printf "config reads %s, but the sidecar container has no env %s: map it from the Secret in secrets.env ({name: %s, key: ...}), or add it to env" . $name $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fail when more than one pod would run with a store that lives in each pod's memory:
quotas would multiply and reconnects or cache hits depend on the pod a request lands on.
Sections left out take the sidecar's defaults: quotas and resume in memory (resume on),
the cache off. A route may turn the cache on (its store is the top level's), but not
resume when the top level turned it off.
*/}}
{{- define "claude-sidecar.checkReplicas" -}}
{{- $config := include "claude-sidecar.parsedConfig" . | fromYaml }}
{{- $auto := .Values.autoscaling }}
{{- $many := or (gt (int .Values.replicaCount) 1) (and $auto.enabled (gt (int $auto.maxReplicas) 1)) }}
{{- if and $many (not .Values.allowMemoryStoresWithReplicas) }}
{{- $memory := list }}
{{- if eq ((get ($config.quotas | default dict) "store") | default "memory") "memory" }}
{{- $memory = append $memory "quotas.store" }}
{{- end }}
{{- $resume := $config.resume | default dict }}
{{- $resumeOn := ne (toString (get $resume "enabled")) "false" }}
{{- if and $resumeOn (eq ((get $resume "store") | default "memory") "memory") }}
{{- $memory = append $memory "resume.store" }}
{{- end }}
{{- $cache := $config.cache | default dict }}
{{- $cacheOn := eq (toString (get $cache "enabled")) "true" }}
{{- range ($config.routes | default list) }}
{{- $routeCache := and (kindIs "map" .) (get . "cache") }}
{{- if and (kindIs "map" $routeCache) (eq (toString (get $routeCache "enabled")) "true") }}
{{- $cacheOn = true }}
{{- end }}
{{- end }}
{{- if and $cacheOn (eq ((get $cache "store") | default "memory") "memory") }}
{{- $memory = append $memory "cache.store" }}
{{- end }}
{{- if $memory }}
{{- fail (printf "more than one replica with %s memory: each pod would count and buffer on its own. Set store: redis for each, or replicaCount: 1, or allowMemoryStoresWithReplicas: true" (join ", " $memory)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The traffic port's scheme: server.tls covers it (the admin port stays plain HTTP). */}}
{{- define "claude-sidecar.scheme" -}}
{{- $server := (include "claude-sidecar.parsedConfig" . | fromYaml).server | default dict }}
{{- ternary "https" "http" (hasKey (get $server "tls" | default dict) "cert_file") }}
{{- end }}

{{/* Milliseconds of a duration as values.schema.json allows it: digits and ms, s, m or h. */}}
{{- define "claude-sidecar.durationMs" -}}
{{- $unit := regexReplaceAll "^[0-9]+" (toString .) "" }}
{{- /* Leading zeros off: int64 would read "010" as octal. */}}
{{- $count := regexReplaceAll "^0+" (regexReplaceAll "[a-z]+$" (toString .) "") "" | default "0" | int64 }}
{{- mul $count (get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $unit) }}
{{- end }}

{{- define "claude-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The sidecar config parsed, so the chart can check it against the values that must agree
with it (ports, shutdown grace). Returns the parsed map as YAML; fails on unparsable YAML.
*/}}
{{- define "claude-sidecar.parsedConfig" -}}
{{- $config := fromYaml .Values.config }}
{{- if hasKey $config "Error" }}
{{- fail (printf "config: not valid YAML: %s" (get $config "Error")) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Fail when server.listen / server.admin_listen disagree with ports.* or are loopback-only. */}}
{{- define "claude-sidecar.checkListeners" -}}
{{- $server := (include "claude-sidecar.parsedConfig" . | fromYaml).server | default dict }}
{{- range $key, $port := dict "listen" .Values.ports.http "admin_listen" .Values.ports.admin }}
{{- $listen := get $server $key | default (printf "0.0.0.0:%v" $port) | toString }}
{{- if not (hasSuffix (printf ":%v" $port) $listen) }}
{{- fail (printf "config server.%s is %q but the chart's port is %v: make them agree" $key $listen $port) }}
{{- end }}
{{- if or (hasPrefix "127." $listen) (hasPrefix "localhost:" $listen) (hasPrefix "[::1]:" $listen) }}
{{- fail (printf "config server.%s is %q: kubelet probes and Services reach the pod IP, listen on 0.0.0.0 or [::]" $key $listen) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The sidecar's drain, server.shutdown_grace_seconds read from the config (default 30), as a
float; fails when it is not a number and no explicit terminationGracePeriodSeconds is set
(then it counts as 0: a ${VAR} the chart cannot add up).
*/}}
{{- define "claude-sidecar.drainSeconds" -}}
{{- $server := (include "claude-sidecar.parsedConfig" . | fromYaml).server | default dict }}
{{- $drain := 30.0 }}
{{- if hasKey $server "shutdown_grace_seconds" }}
{{- $grace := get $server "shutdown_grace_seconds" }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]*)?$" (toString $grace)) }}
{{- /* A ${VAR} (or any text) would read as 0: Kubernetes would kill the drain early. */}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- fail (printf "config server.shutdown_grace_seconds is %q, not a number the chart can read: write the number, or set terminationGracePeriodSeconds above preStopSleepSeconds + the grace yourself" (toString $grace)) }}
{{- end }}
{{- $grace = 0 }}
{{- end }}
{{- $drain = $grace | float64 }}
{{- end }}
{{- $drain }}
{{- end }}

{{/*
Seconds the app container's preStop sleeps before its SIGTERM. Beside a plain sidecar (both
get SIGTERM together) the app must outlive the sidecar's preStop and drain, or the requests
the sidecar is still relaying to it would break: preStopSleepSeconds + ceil(drain). With a
native sidecar (stopped only once the app has exited) the sidecar relays until the app is
gone: the app only waits preStopSleepSeconds, while endpoints drop the pod.
*/}}
{{- define "claude-sidecar.appPreStopSeconds" -}}
{{- if .Values.nativeSidecar }}
{{- .Values.preStopSleepSeconds }}
{{- else }}
{{- add .Values.preStopSleepSeconds (include "claude-sidecar.drainSeconds" . | float64 | ceil | int) }}
{{- end }}
{{- end }}

{{/*
The app container's lifecycle (a preStop sleep, claude-sidecar.appPreStopSeconds), for this
chart's app container and for an injecting chart's own app containers. An exec of `sleep`:
the image needs a sleep binary (the sleep action needs Kubernetes >= 1.30).
*/}}
{{- define "claude-sidecar.appLifecycle" -}}
preStop:
  exec:
    command: ["sleep", "{{ include "claude-sidecar.appPreStopSeconds" . }}"]
{{- end }}

{{/*
Seconds Kubernetes waits after SIGTERM. The sidecar alone: preStop sleep + its drain + 5 (the
sidecar exits at most 4 s after its grace). With an app container (always when injected into
another chart's Deployment), the app's preStop sleep (claude-sidecar.appPreStopSeconds) plus
app.shutdownSeconds: beside a plain sidecar that covers the sidecar's drain too; a native
sidecar's preStop and drain begin only once the app has exited, so they add up.
*/}}
{{- define "claude-sidecar.terminationGracePeriodSeconds" -}}
{{- $drain := include "claude-sidecar.drainSeconds" . | float64 }}
{{- $needed := addf .Values.preStopSleepSeconds $drain }}
{{- $rule := "preStopSleepSeconds + server.shutdown_grace_seconds" }}
{{- /* Injected (deployment.enabled false), the sidecar always has the parent's app beside it. */}}
{{- if or .Values.app.image.repository (not .Values.deployment.enabled) }}
{{- $app := addf (include "claude-sidecar.appPreStopSeconds" . | float64) (.Values.app.shutdownSeconds | float64) }}
{{- if .Values.nativeSidecar }}
{{- $needed = addf $needed $app }}
{{- $rule = "preStopSleepSeconds + app.shutdownSeconds (the app's preStop and exit) + preStopSleepSeconds + server.shutdown_grace_seconds (then the native sidecar's)" }}
{{- else }}
{{- $needed = maxf $needed $app }}
{{- $rule = "the app's preStop sleep (preStopSleepSeconds + ceil(server.shutdown_grace_seconds)) + app.shutdownSeconds" }}
{{- end }}
{{- end }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (ceil $needed | int) 5 }}
{{- else if le (float64 .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds %v must exceed %s (%v)" .Values.terminationGracePeriodSeconds $rule $needed) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The port of the config's app.url (default http://127.0.0.1:3000, the sidecar's): an injecting
chart's app container port derives from it. Fails when the URL reads a ${VAR}.
*/}}
{{- define "claude-sidecar.appPort" -}}
{{- $url := include "claude-sidecar.configValue" (list (include "claude-sidecar.parsedConfig" . | fromYaml) "app.url") | default "http://127.0.0.1:3000" }}
{{- if contains "$" $url }}
{{- fail (printf "config app.url %q reads a variable: claude-sidecar.appPort cannot tell the app's port from it. Write the URL out, or state your container's port yourself" $url) }}
{{- end }}
{{- $parsed := urlParse $url }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $parsed.host) }}
{{- $port | default (ternary "443" "80" (eq $parsed.scheme "https")) }}
{{- end }}

{{/*
Fail when the config does not reach the app container beside the sidecar: no app section (no
app upstream, no app route), or an app.url on a host other than loopback or a port other
than app.port, renders fine and routes nowhere.
*/}}
{{- define "claude-sidecar.checkAppUrl" -}}
{{- $config := include "claude-sidecar.parsedConfig" . | fromYaml }}
{{- if not (hasKey $config "app") }}
{{- fail (printf "the pod runs an app container (app.image.repository) but the config has no app section, so the sidecar never routes to it: add app: {url: \"http://127.0.0.1:%v\"} (app.port) to the config" .Values.app.port) }}
{{- end }}
{{- $url := include "claude-sidecar.configValue" (list $config "app.url") | default "http://127.0.0.1:3000" }}
{{- if not (contains "$" $url) }}
{{- $host := (urlParse $url).hostname }}
{{- if not (has $host (list "127.0.0.1" "localhost" "::1")) }}
{{- fail (printf "config app.url %q is not the app container beside the sidecar (app.image.repository): write http://127.0.0.1:%v (app.port)" $url .Values.app.port) }}
{{- end }}
{{- $port := include "claude-sidecar.appPort" . }}
{{- if ne $port (toString .Values.app.port) }}
{{- fail (printf "config app.url %q is on port %s but the app container listens on app.port %v: the sidecar would route nowhere. Make them agree (app.url: http://127.0.0.1:%v)" $url $port .Values.app.port .Values.app.port) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuse a secret written into the config: it would land in a ConfigMap, which anyone who may
read the namespace's ConfigMaps reads. An Anthropic key anywhere in the text, and any value
of a key the sidecar holds as a secret (shown as *** by `sidecar check`: claude.api_key,
auth.jwt.secret, quotas / resume / cache redis_url, telemetry.user_hash_key, and a route's
auth.jwt.secret, quotas.redis_url, cache.redis_url) that is not one ${VAR} reference: a
literal, or a ${VAR:-default} whose default is the secret, would be in the ConfigMap. And a
URL key (app.url, claude.base_url, auth.jwt.jwks_url, telemetry.otlp_endpoint) whose
userinfo (user:password@) is written out rather than read from a ${VAR}.
*/}}
{{- define "claude-sidecar.checkNoSecretsInConfig" -}}
{{- if regexMatch "sk-ant-[A-Za-z0-9_-]{8,}" .Values.config }}
{{- fail "config contains an Anthropic API key: put it in a Secret and write ${ANTHROPIC_API_KEY} (secrets.env)" }}
{{- end }}
{{- $config := include "claude-sidecar.parsedConfig" . | fromYaml }}
{{- $found := list }}
{{- range $path := list "claude.api_key" "auth.jwt.secret" "quotas.redis_url" "resume.redis_url" "cache.redis_url" "telemetry.user_hash_key" }}
{{- $found = append $found (list $path (include "claude-sidecar.configValue" (list $config $path))) }}
{{- end }}
{{- range $index, $route := $config.routes | default list }}
{{- range $path := list "auth.jwt.secret" "quotas.redis_url" "cache.redis_url" }}
{{- $found = append $found (list (printf "routes.%d.%s" $index $path) (include "claude-sidecar.configValue" (list $route $path))) }}
{{- end }}
{{- end }}
{{- range $found }}
{{- $value := index . 1 }}
{{- if and $value (not (regexMatch "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$" $value)) }}
{{- fail (printf "config %s is a secret written into the config, which lands in the ConfigMap: write one ${VAR} reference there (e.g. \"${%s}\") and map VAR from the Secret in secrets.env" (index . 0) (index (dict "claude.api_key" "ANTHROPIC_API_KEY" "auth.jwt.secret" "JWT_SECRET" "telemetry.user_hash_key" "TELEMETRY_USER_HASH_KEY") (regexReplaceAll "^routes\\.[0-9]+\\." (index . 0) "") | default "REDIS_URL")) }}
{{- end }}
{{- end }}
{{- /*
The ${VAR} a secret key reads must not be a plain `value` of the sidecar's extra env either:
it would be written out in the Deployment (and Helm's release record) instead of a Secret.
*/}}
{{- $plain := dict }}
{{- range .Values.env }}
{{- if hasKey . "value" }}
{{- $_ := set $plain (toString .name) true }}
{{- if regexMatch "sk-ant-[A-Za-z0-9_-]{8,}" (toString .value) }}
{{- fail (printf "env %s holds an Anthropic API key as a plain value: put it in a Secret and map it in secrets.env" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $found }}
{{- $name := regexReplaceAll "^\\$\\{(.*)\\}$" (index . 1) "${1}" }}
{{- if and (index . 1) (hasKey $plain $name) }}
{{- fail (printf "config %s reads ${%s}, which env sets as a plain value: the secret would be written out in the Deployment. Map %s from a Secret (secrets.env, or env with valueFrom.secretKeyRef)" (index . 0) $name $name) }}
{{- end }}
{{- end }}
{{- /* A URL key with credentials in its userinfo (https://user:password@host) written out. */}}
{{- $urls := list }}
{{- range $path := list "app.url" "claude.base_url" "auth.jwt.jwks_url" "telemetry.otlp_endpoint" }}
{{- $urls = append $urls (list $path (include "claude-sidecar.configValue" (list $config $path))) }}
{{- end }}
{{- range $index, $route := $config.routes | default list }}
{{- $urls = append $urls (list (printf "routes.%d.auth.jwt.jwks_url" $index) (include "claude-sidecar.configValue" (list $route "auth.jwt.jwks_url"))) }}
{{- end }}
{{- range $urls }}
{{- $userinfo := regexFind "^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@" (index . 1) }}
{{- if and $userinfo (not (contains "${" $userinfo)) }}
{{- fail (printf "config %s carries credentials (user:password@) written into the config, which lands in the ConfigMap: put the whole URL in the Secret and write one ${VAR} reference there" (index . 0)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The text of one key of a parsed config ((list $map "a.b.c")), "" when a section on the way
is missing or not a map, or the key is unset or null.
*/}}
{{- define "claude-sidecar.configValue" -}}
{{- $node := index . 0 }}
{{- range $key := splitList "." (index . 1) }}
{{- $node = ternary (get (kindIs "map" $node | ternary $node dict) $key) nil (kindIs "map" $node) }}
{{- end }}
{{- if not (kindIs "invalid" $node) }}{{ toString $node }}{{ end }}
{{- end }}

{{- define "claude-sidecar.checkKubeVersion" -}}
{{- if and .Values.nativeSidecar (semverCompare "<1.29-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "nativeSidecar needs Kubernetes >= 1.29 (cluster: %s)" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/*
Fail when a file the config reads (a TLS certificate or key, a JWT public key, at the top or
on a route) is not under one of the sidecar container's extraVolumeMounts: the root
filesystem has no such file, so the pod would only crash-loop on the config error. Paths
written with ${VAR} are left to the sidecar. The config directory and /tmp are the chart's
own mounts: an extra mount at or under them is refused too.
*/}}
{{- define "claude-sidecar.checkFiles" -}}
{{- $config := include "claude-sidecar.parsedConfig" . | fromYaml }}
{{- $files := dict }}
{{- $tls := get ($config.server | default dict) "tls" | default dict }}
{{- range $key := list "cert_file" "key_file" }}
{{- with get $tls $key }}
{{- $_ := set $files (printf "server.tls.%s" $key) . }}
{{- end }}
{{- end }}
{{- $jwt := get ($config.auth | default dict) "jwt" | default dict }}
{{- with get $jwt "public_key_file" }}
{{- $_ := set $files "auth.jwt.public_key_file" . }}
{{- end }}
{{- range $index, $route := $config.routes | default list }}
{{- $routeJwt := get ((get $route "auth") | default dict) "jwt" | default dict }}
{{- with get $routeJwt "public_key_file" }}
{{- $_ := set $files (printf "routes.%d.auth.jwt.public_key_file" $index) . }}
{{- end }}
{{- end }}
{{- range .Values.extraVolumeMounts }}
{{- $at := trimSuffix "/" (toString .mountPath) }}
{{- if or (eq $at "/tmp") (eq $at "/etc/claude-sidecar") (hasPrefix "/etc/claude-sidecar/" $at) }}
{{- fail (printf "extraVolumeMounts: %q is the chart's own mount (the config directory or /tmp): mount at another path, e.g. /etc/claude-sidecar-tls" .mountPath) }}
{{- end }}
{{- end }}
{{- range $key, $path := $files }}
{{- $path = toString $path }}
{{- if not (contains "$" $path) }}
{{- $mounted := false }}
{{- range $.Values.extraVolumeMounts }}
{{- $at := trimSuffix "/" (toString .mountPath) }}
{{- if or (eq $path $at) (hasPrefix (printf "%s/" $at) $path) }}
{{- $mounted = true }}
{{- end }}
{{- end }}
{{- if not $mounted }}
{{- fail (printf "config %s is %q, but no extraVolumeMounts entry of the sidecar container holds it: mount the Secret with the file (extraVolumes and extraVolumeMounts, see docs/kubernetes.md)" $key $path) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
