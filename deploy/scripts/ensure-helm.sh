#!/usr/bin/env bash
# Prints the path of the pinned Helm CLI, building it first with `go install` when it is missing
# (helm's release binaries cannot be downloaded here; the Go module proxy can be reached).
# It lands in the standard Go bin dir ($GOBIN, else $(go env GOPATH)/bin, i.e. ~/go/bin) and is
# reused while its version matches. Cold (empty module and build caches, 2 cores): about 2 min.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Kubernetes minor version of helm's client-go (v0.37 for helm v3.22); helm's own release build
# stamps it, and it is the cluster version `helm template` and `helm lint` assume by default.
HELM_K8S_MINOR="${HELM_K8S_MINOR:-37}"

go="$(command -v go || echo /usr/local/go/bin/go)"
[ -x "$go" ] || { echo "ensure-helm: a Go toolchain is required to build helm" >&2; exit 1; }
gobin="$("$go" env GOBIN)"
[ -n "$gobin" ] || gobin="$("$go" env GOPATH)/bin"
helm="$gobin/helm"

if [ -x "$helm" ] && [ "$("$helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
  echo "$helm"
  exit 0
fi

echo "ensure-helm: building helm $HELM_VERSION with go install into $gobin" >&2
# The same -X stamps as helm's Makefile, so that `helm version` and the default Kubernetes
# version match the official binary.
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${HELM_K8S_MINOR}"
done
CGO_ENABLED=0 "$go" install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
echo "$helm"
