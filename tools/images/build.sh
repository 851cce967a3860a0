#!/usr/bin/env bash
# make images: the four service images and the emulators' two (docker-compose.local.yml) from their
# Dockerfiles, tagged eventflow-<name>:dev.
# Needs a running Docker engine (make test-images starts one); makes the base image when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/images/common.sh
. tools/images/common.sh
mkdir -p "$STATE_DIR"
engine_answers || die "no Docker engine answers (docker info failed); make test-images starts one, or run dockerd"
ensure_base
build_images
size_table
