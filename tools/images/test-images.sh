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
trap stop_engine EXIT
ensure_packages
start_engine
ensure_base
build_images
size_table
say "ready to test after $((SECONDS - started)) s"
EVENTFLOW_TEST_IMAGES=1 EVENTFLOW_IMAGE_TAG=$TAG $RUN pytest tests/images --no-cov ${PYTEST_ARGS:-}
say "test-images took $((SECONDS - started)) s"
