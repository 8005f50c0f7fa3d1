#!/usr/bin/env bash
# Build the operator and trainer images: images/build.sh [operator|trainer|trainer-cpu|all]
#   operator     images/operator/Dockerfile      (python:3.11-slim base)
#   trainer      images/trainer/Dockerfile       (CUDA base: the GPU trainer)
#   trainer-cpu  images/trainer/Dockerfile.cpu   (python:3.11-slim base: CPU-only jobs)
# Environment: REGISTRY (default ghcr.io/rlhf-operator), TAG (default: the version in pyproject.toml),
# PUSH=1 to push after building, BUILDER (docker, buildah; default: docker when an engine answers,
# else buildah, which needs no daemon), DOCKER (default docker; e.g. podman).
# Without any registry (base images cannot be pulled): `make images LOCAL=1` (docs/images.md).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
REGISTRY=${REGISTRY:-ghcr.io/rlhf-operator}
TAG=${TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)}
TARGETS=${1:-all}

case "$TARGETS" in
  all) TARGETS="operator trainer trainer-cpu" ;;
  operator|trainer|trainer-cpu) ;;
  *) echo "usage: $0 [operator|trainer|trainer-cpu|all]" >&2; exit 2 ;;
esac

if [ -z "${BUILDER:-}" ]; then
  if command -v "$DOCKER" > /dev/null 2>&1 && "$DOCKER" info > /dev/null 2>&1; then
    BUILDER=docker
  elif command -v buildah > /dev/null 2>&1; then
    BUILDER=buildah
  else
    echo "images: neither a reachable Docker engine ('$DOCKER info' failed or no '$DOCKER') nor buildah is here." >&2
    echo "images: start a Docker daemon, or install buildah (Debian: apt-get install buildah), and run 'make images' again." >&2
    exit 1
  fi
fi

for target in $TARGETS; do
  dockerfile="images/$target/Dockerfile"
  image="$REGISTRY/$target:$TAG"
  if [ "$target" = trainer-cpu ]; then
    dockerfile=images/trainer/Dockerfile.cpu
  fi
  echo "images: building $image from $dockerfile with $BUILDER"
  if [ "$BUILDER" = buildah ]; then
    buildah bud --layers --network host --ignorefile "$dockerfile.dockerignore" -f "$dockerfile" -t "$image" .
  else
    DOCKER_BUILDKIT=1 "$DOCKER" build -f "$dockerfile" -t "$image" .
  fi
  if [ "${PUSH:-0}" = 1 ]; then
    if [ "$BUILDER" = buildah ]; then buildah push "$image"; else "$DOCKER" push "$image"; fi
  fi
done
