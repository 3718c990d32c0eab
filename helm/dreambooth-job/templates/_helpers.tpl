{{/*
Helpers of the dreambooth-job chart. The Job they build is the one that
dreambooth_job.k8s.manifest.build_job builds in Python, rendered from the descriptions build_job
uses, which helm/sync_chart.py writes into files/package.yaml: when each option is stated and
which ones build_job resolves (`options`), the subject id and label rule (`labels`), the env each
setting feeds (`pod.settingsEnv`), the parts of the pod that no value changes (`pod`), the sizing
profiles, the ceilings. The helpers place values by those tables and keep no rule of their own;
tests/deploy compares the chart's Job with build_job's field by field.
*/}}

{{/* What the chart knows about the package: files/package.yaml, written by helm/sync_chart.py. */}}
{{- define "dreambooth-job.package" -}}
{{- .Files.Get "files/package.yaml" -}}
{{- end }}

{{/* The app.kubernetes.io/name label: nameOverride, else the chart's name. */}}
{{- define "dreambooth-job.name" -}}
{{- .Values.nameOverride | default .Chart.Name }}
{{- end }}

{{/*
The Job's name (and the PodMonitor's, and a created ServiceAccount's): fullnameOverride, else the
release's, so that `helm install dog-42` runs job/dog-42. The schema keeps both DNS-1123 labels.
*/}}
{{- define "dreambooth-job.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name }}
{{- end }}

{{/* chart-version for the helm.sh/chart label. */}}
{{- define "dreambooth-job.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The subject id: job.subjectId, else the last path component of job.instanceData as a label value,
else the fallback: TrainConfig.resolved_subject_id, by the rule's data in files/package.yaml's
`labels` (dreambooth_job.config.train_config.LAST_PATH_COMPONENT, ...), so that the label, the args and the
job's logs and metrics name the subject alike.
*/}}
{{- define "dreambooth-job.subjectId" -}}
{{- if .Values.job.subjectId }}
{{- .Values.job.subjectId }}
{{- else }}
{{- $rule := (include "dreambooth-job.package" . | fromYaml).labels }}
{{- $last := regexReplaceAll $rule.lastPathComponent (toString (.Values.job.instanceData | default "")) "${1}" }}
{{- include "dreambooth-job.labelValue" (list . $last) | default $rule.subjectIdFallback }}
{{- end }}
{{- end }}

{{/*
Any text as a valid label value (dreambooth_job.config.train_config.label_value, by files/package.yaml's
`labels`): include "dreambooth-job.labelValue" (list $ text).
*/}}
{{- define "dreambooth-job.labelValue" -}}
{{- $rule := (include "dreambooth-job.package" (index . 0) | fromYaml).labels }}
{{- regexReplaceAll $rule.unsafe (index . 1) "-" | trunc (int $rule.maxLength) | trimAll $rule.trimmed }}
{{- end }}

{{/* Labels of the Job and its pod. */}}
{{- define "dreambooth-job.labels" -}}
app.kubernetes.io/name: {{ include "dreambooth-job.name" . | quote }}
app.kubernetes.io/instance: {{ include "dreambooth-job.fullname" . | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "dreambooth-job.chart" . }}
{{- if eq .Values.mode "generate" }}
dreambooth-job/mode: "generate"
{{- else }}
dreambooth-job/subject: {{ include "dreambooth-job.labelValue" (list . (include "dreambooth-job.subjectId" .)) | quote }}
{{- with .Values.job.batchId }}
dreambooth-job/batch: {{ include "dreambooth-job.labelValue" (list $ .) | quote }}
{{- end }}
{{- end }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels a PodMonitor selects the pod by. */}}
{{- define "dreambooth-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dreambooth-job.name" . | quote }}
app.kubernetes.io/instance: {{ include "dreambooth-job.fullname" . | quote }}
{{- end }}

{{/*
A job option's value, or the CLI default when the values leave it out, as JSON:
include "dreambooth-job.option" (list $ "metricsPort").
*/}}
{{- define "dreambooth-job.option" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $value := index $root.Values.job $key }}
{{- if kindIs "invalid" $value }}
{{- range (include "dreambooth-job.package" $root | fromYaml).options }}
{{- if eq .key $key }}{{ $value = .default }}{{ end }}
{{- end }}
{{- end }}
{{- toJson $value }}
{{- end }}

{{/*
One container arg as a quoted YAML scalar; numbers via JSON, so 8e+07 never appears. Each `$` is
doubled (dreambooth_job.k8s.pod.escape_expansion): the kubelet would expand a tenant's
"$(AWS_SECRET_ACCESS_KEY)" into the secret; `$$` reaches the container as `$`.
*/}}
{{- define "dreambooth-job.arg" -}}
{{- if kindIs "string" . }}{{ replace "$" "$$" . | toJson }}{{ else }}{{ toJson . | quote }}{{ end }}
{{- end }}

{{/*
The container args: `train`, then the options as dreambooth_job.config.sources.to_cli_args states
them, each when files/package.yaml's `stated` says (always, a null one as `auto`; whenSet;
whenChanged from its default), those build_job resolves by the named template of their
`resolvedBy`; then extraArgs.
*/}}
{{- define "dreambooth-job.args" -}}
- train
{{- range $option := (include "dreambooth-job.package" $ | fromYaml).options }}
{{- $value := index $.Values.job $option.key }}
{{- with $option.resolvedBy }}
{{- $value = include . $ }}
{{- if eq $option.resolvedAs "number" }}{{ $value = float64 $value }}{{ end }}
{{- end }}
{{- $given := not (kindIs "invalid" $value) }}
{{- if or (eq $option.stated "always") (and $given (or (eq $option.stated "whenSet") (ne (toJson $value) (toJson $option.default)))) }}
{{- if not $given }}
- {{ $option.flag }}
- {{ include "dreambooth-job.arg" "auto" }}
{{- else if kindIs "bool" $value }}
- {{ ternary $option.flag $option.negation $value }}
{{- else if kindIs "slice" $value }}
{{- range $value }}
- {{ $option.flag }}
- {{ include "dreambooth-job.arg" . }}
{{- end }}
{{- else }}
- {{ $option.flag }}
- {{ include "dreambooth-job.arg" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ include "dreambooth-job.arg" (toString .) }}
{{- end }}
{{- end }}

{{/*
The container args of `mode: generate`: `generate`, then the options as
dreambooth_job.generation.generate_config.to_cli_args states them, each when files/package.yaml's
`stated` says (always, a null one as `auto`; whenSet); then extraArgs.
*/}}
{{- define "dreambooth-job.generateArgs" -}}
- generate
{{- range $option := (include "dreambooth-job.package" $ | fromYaml).generateOptions }}
{{- $value := index $.Values.generate $option.key }}
{{- if kindIs "invalid" $value }}
{{- if eq $option.stated "always" }}
- {{ $option.flag }}
- {{ include "dreambooth-job.arg" "auto" }}
{{- end }}
{{- else }}
{{- range (kindIs "slice" $value | ternary $value (list $value)) }}
- {{ $option.flag }}
- {{ include "dreambooth-job.arg" . }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ include "dreambooth-job.arg" (toString .) }}
{{- end }}
{{- end }}

{{/* The metrics port: job.metricsPort when training; none for generate, which serves no metrics. */}}
{{- define "dreambooth-job.metricsPort" -}}
{{- if eq .Values.mode "generate" }}0{{ else }}{{ include "dreambooth-job.option" (list . "metricsPort") }}{{ end }}
{{- end }}

{{/* The ServiceAccount of the pod; empty: the namespace's default. */}}
{{- define "dreambooth-job.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dreambooth-job.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository:tag, or repository@digest when a digest pins it. */}}
{{- define "dreambooth-job.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The sizing profile (files/package.yaml's `sizing`, from dreambooth_job/training/sizing.py) as JSON: the
`sizing` value, or with `auto` the profile of job.trainMode for a base model the chart cannot read
(sizing.UNDETECTED: the train mode's largest; never a guess from the model's name).
*/}}
{{- define "dreambooth-job.profile" -}}
{{- $sizing := (include "dreambooth-job.package" . | fromYaml).sizing }}
{{- $name := .Values.sizing | default "auto" }}
{{- if eq $name "auto" }}
{{- $mode := (printf "{\"v\": %s}" (include "dreambooth-job.option" (list . "trainMode")) | fromJson).v }}
{{- $name = get $sizing.undetected (toString $mode) }}
{{- end }}
{{- if not (hasKey $sizing.profiles $name) }}
{{- fail (printf "sizing %q is not a sizing profile" $name) }}
{{- end }}
{{- index $sizing.profiles $name | toJson }}
{{- end }}

{{/* The job's SIGTERM budget: job.terminationGraceSeconds, else the sizing profile's. */}}
{{- define "dreambooth-job.graceBudget" -}}
{{- $budget := include "dreambooth-job.option" (list . "terminationGraceSeconds") }}
{{- if eq $budget "null" }}
{{- $budget = (include "dreambooth-job.profile" . | fromJson).jobGraceSeconds }}
{{- end }}
{{- $budget }}
{{- end }}

{{/*
SIGTERM-to-SIGKILL time: the job's checkpoint budget (dreambooth-job.graceBudget) rounded up
plus the package's margin, unless set; a value below that would kill the checkpoint midway.
*/}}
{{- define "dreambooth-job.terminationGracePeriodSeconds" -}}
{{- $package := include "dreambooth-job.package" . | fromYaml }}
{{- $budget := include "dreambooth-job.graceBudget" . | float64 }}
{{- $needed := add (ceil $budget | int) ($package.terminationMarginSeconds | int) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $needed }}
{{- else if lt (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds=%d leaves the job no time to checkpoint: job.terminationGraceSeconds is %v, so at least %d is needed" (int .Values.terminationGracePeriodSeconds) $budget $needed) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The operator's ceiling `key` (files/package.yaml's `ceilings`, from operator_policy.CEILINGS) as
JSON: operator.<key>, else the package's default.
*/}}
{{- define "dreambooth-job.ceiling" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $value := index $root.Values.operator $key }}
{{- range (include "dreambooth-job.package" $root | fromYaml).ceilings }}
{{- if and (eq .key $key) (kindIs "invalid" $value) }}{{ $value = .default }}{{ end }}
{{- end }}
{{- toJson $value }}
{{- end }}

{{/*
A Kubernetes quantity ("500m", "8", "96Gi", "1.5e9") as a number, as dreambooth_job.config.quantities
reads it, so that resources can be held against operator.maxCpu and operator.maxMemory.
*/}}
{{- define "dreambooth-job.quantity" -}}
{{- $text := toString . }}
{{- $scale := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- $number := regexFind "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?" $text }}
{{- $suffix := trimPrefix $number $text }}
{{- if or (not $number) (not (hasKey $scale $suffix)) }}
{{- fail (printf "%q is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)" $text) }}
{{- end }}
{{- mulf (float64 $number) (index $scale $suffix) }}
{{- end }}

{{/*
The pod's variables that values feed: the rows of files/package.yaml's `pod.settingsEnv`
(dreambooth_job.k8s.wiring.SETTINGS_ENV, which build_job's pod reads as well), each the value at
its `values` path placed as its `form` says; `image` is the reference (dreambooth-job.image).
*/}}
{{- define "dreambooth-job.settingsEnv" -}}
{{- $computed := dict "image" (include "dreambooth-job.image" .) }}
{{- range $wire := (include "dreambooth-job.package" . | fromYaml).pod.settingsEnv }}
{{- $value := $.Values }}
{{- range splitList "." $wire.values }}{{ $value = index ($value | default dict) . }}{{ end }}
{{- if hasKey $computed $wire.values }}{{ $value = index $computed $wire.values }}{{ end }}
{{- if eq $wire.form "unset" }}
{{- if not $value }}
- name: {{ $wire.name }}
  value: {{ $wire.value | quote }}
{{- end }}
{{- else if eq $wire.form "ceiling" }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $wire.name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- else if $value }}
{{- $name := $wire.name }}
{{- if $wire.namedBy }}{{ $name = required $wire.missing (index $.Values.job $wire.namedBy) }}{{ end }}
- name: {{ $name | quote }}
{{- if eq $wire.form "secret" }}
  valueFrom:
    secretKeyRef:
      name: {{ $value | quote }}
      key: {{ $name | quote }}
{{- else if eq $wire.form "joined" }}
  value: {{ join "," $value | quote }}
{{- else if eq $wire.form "flag" }}
  value: "true"
{{- else }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The value at a dotted path under .Values, as JSON: include "dreambooth-job.at" (list $ "tmp.sizeLimit"). */}}
{{- define "dreambooth-job.at" -}}
{{- $value := (index . 0).Values }}
{{- range splitList "." (index . 1) }}{{ $value = index ($value | default dict) . }}{{ end }}
{{- toJson $value }}
{{- end }}

{{/*
The pod's volumes: the rows of files/package.yaml's `pod.volumes` (dreambooth_job.k8s.wiring.VOLUMES,
which build_job's pod reads as well), each the claim its values name, else an emptyDir of its
`medium` and size limit, `auto` standing for the sizing profile's.
*/}}
{{- define "dreambooth-job.volumes" -}}
{{- range $wire := (include "dreambooth-job.package" . | fromYaml).pod.volumes }}
{{- $claim := "" }}
{{- with $wire.claim }}{{ $claim = (printf "{\"v\": %s}" (include "dreambooth-job.at" (list $ .)) | fromJson).v }}{{ end }}
- name: {{ $wire.name }}
{{- if $claim }}
  persistentVolumeClaim:
    claimName: {{ $claim | quote }}
{{- else }}
{{- $limit := (printf "{\"v\": %s}" (include "dreambooth-job.at" (list $ $wire.sizeLimit)) | fromJson).v }}
{{- if and $wire.auto (eq (toString $limit) "auto") }}
{{- $limit = index (include "dreambooth-job.profile" $ | fromJson) $wire.auto }}
{{- end }}
{{- $emptyDir := dict }}
{{- with $wire.medium }}{{ $_ := set $emptyDir "medium" . }}{{ end }}
{{- with $limit }}{{ $_ := set $emptyDir "sizeLimit" . }}{{ end }}
  emptyDir: {{ toJson $emptyDir }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fails the install when a value asks for more than the operator's ceilings allow (the checks of
dreambooth_job.config.policy_checks and ClusterSettings): a job option that declares a ceiling, the grace
period, gpu.count, and the CPU and memory of resources.
*/}}
{{- define "dreambooth-job.checkCeilings" -}}
{{- range (include "dreambooth-job.package" . | fromYaml).ceilings }}
{{- $most := (printf "{\"v\": %s}" (include "dreambooth-job.ceiling" (list $ .key)) | fromJson).v }}
{{- if and .option (ne $.Values.mode "generate") }}
{{- $value := (printf "{\"v\": %s}" (include "dreambooth-job.option" (list $ .option)) | fromJson).v }}
{{- if and (not (kindIs "invalid" $value)) (gt (float64 $value) (float64 $most)) }}
{{- fail (printf "job.%s %v is above the operator's ceiling of %v (operator.%s)" .option $value $most .key) }}
{{- end }}
{{- end }}
{{- if eq .key "maxTerminationGraceSeconds" }}
{{- $period := include "dreambooth-job.terminationGracePeriodSeconds" $ | float64 }}
{{- $package := include "dreambooth-job.package" $ | fromYaml }}
{{- if gt $period (addf $most $package.terminationMarginSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds %d is above the operator's ceiling of %v s plus %v s (operator.%s)" (int $period) $most $package.terminationMarginSeconds .key) }}
{{- end }}
{{- else if eq .key "maxGpus" }}
{{- if gt (float64 $.Values.gpu.count) (float64 $most) }}
{{- fail (printf "gpu.count %v is above the operator's ceiling of %v (operator.maxGpus)" $.Values.gpu.count $most) }}
{{- end }}
{{- else if .resource }}
{{- $resource := .resource }}
{{- $key := .key }}
{{- range $kind := list "requests" "limits" }}
{{- $quantity := index ((index ($.Values.resources | default dict) $kind) | default dict) $resource }}
{{- if and (not (kindIs "invalid" $quantity)) (not (kindIs "invalid" $most)) }}
{{- if gt (include "dreambooth-job.quantity" $quantity | float64) (include "dreambooth-job.quantity" $most | float64) }}
{{- fail (printf "resources.%s.%s %v is above the operator's ceiling of %v (operator.%s)" $kind $resource $quantity $most $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
