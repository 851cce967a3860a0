#!/usr/bin/env bash
# make test-images: install the engine when missing, start it when none answers (and stop it again
# at the end), make or reuse the base image, build the four service images and the emulators' two,
# check each service image by running it, and run the whole stack of docker-compose.local.yml
# (tests/images). Fails with one line saying why when the engine cannot be had.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/images/common.sh
. tools/images/common.sh
mkdir -p "$STATE_DIR"
RUN=${RUN:-uv run --frozen}
started=$SECONDS

# The healthy-then-stopped check needs the services' backends. Unless they are given
# (EVENTFLOW_IMAGES_BACKEND_ENV), they are the project's emulators as containers: cosmos, messaging
# and azurite of docker-compose.local.yml (project eventflow-images-backends, host ports picked by
# the engine), with emulators/local.env's settings on that project's network.
BACKENDS_PROJECT=eventflow-images-backends
BACKENDS_UP=
backends() {
  [ -z "${EVENTFLOW_IMAGES_BACKEND_ENV:-}" ] || return 0
  local started=$SECONDS
  COMPOSE=$(compose_command)
  export EVENTFLOW_LOCAL_COSMOS_PORT=0 EVENTFLOW_LOCAL_MESSAGING_PORT=0 EVENTFLOW_LOCAL_MESSAGING_ADMIN_PORT=0 \
    EVENTFLOW_LOCAL_AZURITE_PORT=0 EVENTFLOW_IMAGE_TAG=$TAG
  BACKENDS_UP=1
  $COMPOSE -p "$BACKENDS_PROJECT" -f "$LOCAL_COMPOSE_FILE" up -d --wait --wait-timeout 60 --no-build --pull never \
    cosmos messaging azurite >"$STATE_DIR/backends.log" 2>&1 \
    || { tail -n 20 "$STATE_DIR/backends.log" >&2; die "the emulator containers did not turn healthy (log: $STATE_DIR/backends.log)"; }
  export EVENTFLOW_IMAGES_BACKEND_ENV=$PWD/emulators/local.env EVENTFLOW_IMAGES_BACKEND_NETWORK=${BACKENDS_PROJECT}_default
  say "emulator containers healthy in $((SECONDS - started)) s (network ${BACKENDS_PROJECT}_default)"
}
stop_backends() {
  [ -n "$BACKENDS_UP" ] || return 0
  $COMPOSE -p "$BACKENDS_PROJECT" -f "$LOCAL_COMPOSE_FILE" down -v --timeout 30 >>"$STATE_DIR/backends.log" 2>&1 || true
  BACKENDS_UP=
}
trap 'stop_backends; stop_engine' EXIT

ensure_packages
start_engine
ensure_base
build_images
size_table
backends
say "ready to test after $((SECONDS - started)) s"
EVENTFLOW_TEST_IMAGES=1 EVENTFLOW_IMAGE_TAG=$TAG $RUN pytest tests/images --no-cov ${PYTEST_ARGS:-}
say "test-images took $((SECONDS - started)) s"
