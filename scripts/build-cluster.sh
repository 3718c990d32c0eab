#!/usr/bin/env bash
# Build the Kubernetes control plane the cluster tests run (tests/cluster) from upstream Go
# sources at the releases pinned in cluster/*/go.mod and go.sum: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler (cluster/kube), kwok (cluster/kwok), Kueue
# (cluster/kueue) and the Helm CLI (cluster/helm), all from the Go module proxy.
#
# The binaries land in a cache folder keyed by those files and the Go version, so a warm run
# builds nothing; the last line printed is the folder. scripts/setup.sh runs this.
#   scripts/build-cluster.sh           # build what is missing, print the bin folder
#   scripts/build-cluster.sh --print   # print the bin folder, build nothing (exit 1 if incomplete)
# DREAMBOOTH_CLUSTER_CACHE moves the cache (default: ~/.cache/dreambooth-job/cluster).
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$0")/../cluster"

# module folder: the commands it builds
declare -A COMMANDS=(
  [kube]="./cmd/etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler"
  [kwok]="sigs.k8s.io/kwok/cmd/kwok"
  [kueue]="sigs.k8s.io/kueue/cmd/kueue"
  [helm]="helm.sh/helm/v4/cmd/helm"
)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kueue helm)

# The release each binary reports (`--version`, the apiserver's /version that Helm checks against a
# chart's kubeVersion), stamped in as upstream's own release builds do.
version_flags() {
  local version
  case "$1" in
    kube)
      version=$(go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)
      local minor=${version#v1.}
      minor=${minor%%.*}
      echo "-X k8s.io/component-base/version.gitVersion=$version" \
           "-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
           "-X k8s.io/client-go/pkg/version.gitVersion=$version" \
           "-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor" ;;
    kueue) echo "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$(go list -mod=readonly -m -f '{{.Version}}' sigs.k8s.io/kueue)" ;;
    helm) echo "-X helm.sh/helm/v4/internal/version.version=$(go list -mod=readonly -m -f '{{.Version}}' helm.sh/helm/v4)" ;;
  esac
}

key=$( { go env GOVERSION; cat ./*/go.mod ./*/go.sum ./kube/cmd/etcd/main.go "$script"; } | sha256sum | cut -c1-16)
bin="${DREAMBOOTH_CLUSTER_CACHE:-$HOME/.cache/dreambooth-job/cluster}/$key/bin"

# Kueue's CRDs and webhook configuration, from the same release as the binary: the tests install
# them (tests/cluster/kueue.py) without needing the Go module cache.
kueue_config="$bin/../kueue-config"

complete() {
  local name
  for name in "${BINARIES[@]}"; do [ -x "$bin/$name" ] || return 1; done
  [ -d "$kueue_config" ]
}

if [ "${1:-}" = "--print" ]; then
  echo "$bin"
  complete
  exit
fi

mkdir -p "$bin"
for module in kube kwok kueue helm; do
  wanted=()
  for command in ${COMMANDS[$module]}; do
    [ -x "$bin/$(basename "$command")" ] || wanted+=("$command")
  done
  [ "${#wanted[@]}" -eq 0 ] && continue
  echo "build-cluster: building ${wanted[*]} (cold: minutes; the Go build cache makes reruns quick)" >&2
  start=$SECONDS
  # Into a scratch folder first: an interrupted build leaves no half-written binary in the cache.
  scratch=$(mktemp -d "$bin/.build.XXXXXX")
  (cd "$module" && go build -mod=readonly -trimpath -ldflags="-s -w $(version_flags "$module")" \
                             -o "$scratch/" "${wanted[@]}")
  mv "$scratch"/* "$bin/"
  rmdir "$scratch"
  echo "build-cluster: $module built in $((SECONDS - start)) s" >&2
done
if [ ! -d "$kueue_config" ]; then
  source_config="$(cd kueue && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kueue)/config/components"
  scratch=$(mktemp -d "$bin/../.kueue-config.XXXXXX")
  cp -r "$source_config"/. "$scratch"/
  chmod -R u+w "$scratch"
  mv "$scratch" "$kueue_config"
fi
complete
echo "$bin"
