#!/usr/bin/env bash
# make test-images: install the engine when missing, start it when none answers (and stop it again
# at the end), make or reuse the base image, build the four images and check each by running it
# (tests/images). Fails with one line saying why when the engine cannot be had.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/images/common.sh
. tools/images/common.sh
mkdir -p "$STATE_DIR"
RUN=${RUN:-uv run --frozen}
started=$SECONDS

# The healthy-then-stopped check needs the services' backends. Unless they are given
# (EVENTFLOW_IMAGES_BACKEND_ENV), the producer gets the npm cosmosdb-server (make setup installs it):
# Cosmos DB is all it needs. The other three need Event Hubs and Service Bus: skipped until given.
STAND_IN=
stand_in_backend() {
  [ -z "${EVENTFLOW_IMAGES_BACKEND_ENV:-}" ] || return 0
  if [ ! -d node_modules/@vercel/cosmosdb-server ] || ! command -v node >/dev/null 2>&1; then
    say "no npm cosmosdb-server here: every healthy-with-backend check is skipped"; return 0
  fi
  if (echo >/dev/tcp/127.0.0.1/8000) 2>/dev/null; then
    say "127.0.0.1:8000 is taken (make dev?): the producer's healthy-with-backend check is skipped"; return 0
  fi
  local port=18081 deadline=$((SECONDS + 15))
  while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  COSMOS_PORT=$port COSMOS_NO_SSL=1 node tools/local-servers/cosmos-start.js >"$STATE_DIR/cosmos.log" 2>&1 &
  STAND_IN=$!
  until (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "cosmosdb-server did not listen on 127.0.0.1:$port: $(tail -n 1 "$STATE_DIR/cosmos.log")"
    sleep 0.2
  done
  cat >"$STATE_DIR/backend.env" <<ENV
PRODUCER_MODE=emulator
PRODUCER_COSMOS_ENDPOINT=http://127.0.0.1:$port/
PRODUCER_COSMOS_KEY=C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==
ENV
  export EVENTFLOW_IMAGES_BACKEND_ENV=$STATE_DIR/backend.env EVENTFLOW_IMAGES_BACKEND_NETWORK=host
  say "cosmosdb-server on 127.0.0.1:$port for the producer (pid $STAND_IN)"
}
stop_stand_in() {
  [ -n "$STAND_IN" ] || return 0
  kill "$STAND_IN" 2>/dev/null || true
  wait "$STAND_IN" 2>/dev/null || true
  STAND_IN=
}
trap 'stop_stand_in; stop_engine' EXIT

ensure_packages
start_engine
ensure_base
build_images
size_table
stand_in_backend
say "ready to test after $((SECONDS - started)) s"
EVENTFLOW_TEST_IMAGES=1 EVENTFLOW_IMAGE_TAG=$TAG $RUN pytest tests/images --no-cov ${PYTEST_ARGS:-}
say "test-images took $((SECONDS - started)) s"
