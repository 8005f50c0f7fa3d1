#!/usr/bin/env bash
# Build the operator and trainer images: images/build.sh [operator|trainer|all]
# Environment: REGISTRY (default ghcr.io/rlhf-operator), TAG (default: the version in pyproject.toml),
# PUSH=1 to push after building, DOCKER (default docker).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
REGISTRY=${REGISTRY:-ghcr.io/rlhf-operator}
TAG=${TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)}
TARGETS=${1:-all}

case "$TARGETS" in
  all) TARGETS="operator trainer" ;;
  operator|trainer) ;;
  *) echo "usage: $0 [operator|trainer|all]" >&2; exit 2 ;;
esac

if ! command -v "$DOCKER" > /dev/null 2>&1; then
  echo "images: no '$DOCKER' command on PATH; building the images needs a Docker engine (install Docker, or set DOCKER=podman)." >&2
  exit 1
fi
if ! info_err=$("$DOCKER" info 2>&1 > /dev/null); then
  echo "images: no Docker engine is reachable ('$DOCKER info' failed), so the images cannot be built here." >&2
  echo "images: start the Docker daemon (or point DOCKER_HOST at one) and run 'make images' again." >&2
  echo "images: '$DOCKER info' said: $(echo "$info_err" | tail -n 1)" >&2
  exit 1
fi

for target in $TARGETS; do
  image="$REGISTRY/$target:$TAG"
  echo "images: building $image from images/$target/Dockerfile"
  DOCKER_BUILDKIT=1 "$DOCKER" build -f "images/$target/Dockerfile" -t "$image" .
  if [ "${PUSH:-0}" = 1 ]; then
    "$DOCKER" push "$image"
  fi
done
