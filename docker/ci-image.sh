#!/usr/bin/env bash
# Build the CPU image with podman and run it for real: /health, one best_of_n chat completion through the
# official openai client, then a clean stop (SIGTERM -> drain -> exit 0). CI runs this after the test suite.
#
# No registry is reachable in CI, so the Debian bookworm base image is made locally with debootstrap and
# imported. The host's CA certificates go into it (the network re-signs TLS), and the host's torch wheel folder,
# if it has one, is mounted into the build instead of PyTorch's index.
#
# Needs root, podman, runc and debootstrap (installed here from Debian if missing). Environment knobs:
#   ALIGND_CI_PORT (18123), ALIGND_CI_KEEP=1 keeps the image and base for a faster rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/alignd:cpu
BASE=localhost/alignd-base:bookworm
NAME=alignd-ci-$$
PORT=${ALIGND_CI_PORT:-18123}
PY=${PYTHON:-.venv/bin/python}
WHEELS=${ALIGND_CI_WHEELS:-/opt/wheels}

log() { printf '\n== %s: %s\n' "$(date +%T)" "$*"; }

install_tools() {
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
    fi
}

configure_podman() {
    # runc and cgroupfs work in a VM without systemd; file events need no journald. nofile may not exceed the
    # hard limit this shell was given. Written to a file of our own (CONTAINERS_CONF), not /etc/containers.
    local nofile
    nofile=$(ulimit -Hn)
    [[ $nofile == unlimited || $nofile -gt 1048576 ]] && nofile=1048576
    export CONTAINERS_CONF=${TMPDIR:-/tmp}/alignd-containers.conf
    cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
}

build_base() {
    if podman image exists "$BASE"; then
        log "base image $BASE already present"
        return
    fi
    log "debootstrap bookworm into a base image"
    local root
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
}

build_image() {
    log "podman build $IMAGE"
    local args=(--network host --format docker -f docker/Dockerfile.cpu --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE")
    if [[ -d $WHEELS ]]; then
        args+=(--volume "$WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_EXTRA_INDEX_URL=)
    fi
    podman build "${args[@]}" .
}

cleanup() {
    local status=$?
    if ((status)); then
        echo "failed: the container's log ends with" >&2
        podman logs "$NAME" 2>&1 | grep -v '^time=' | tail -60 >&2 || true
    fi
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    if [[ ${ALIGND_CI_KEEP:-0} != 1 ]]; then
        podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    fi
}

run_image() {
    log "podman run $IMAGE on port $PORT"
    trap cleanup EXIT
    # vLLM's engine core needs more /dev/shm than the 64 MB a container gets by default. The image's HEALTHCHECK
    # is run by hand below: podman's timer for it needs systemd, which this VM does not run.
    # A configuration of our own, mounted over the built-in one: the image's one plus a reward to look for.
    local config
    config=$(mktemp --suffix .yaml)
    cp docker/alignd.cpu.yaml "$config"
    echo '  ci_mounted: {type: length, unit: chars, description: "Declared only in the file CI mounts."}' >>"$config"
    chmod 644 "$config"
    podman run -d --init --network host --shm-size 1g --health-interval disable --name "$NAME" \
        -v "$config:/etc/alignd/alignd.yaml:ro" -e "ALIGND_PORT=$PORT" -e ALIGND_HOST=127.0.0.1 "$IMAGE"
    local deadline=$((SECONDS + 300))
    until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
        if ((SECONDS > deadline)) || [[ $(podman inspect -f '{{.State.Running}}' "$NAME") != true ]]; then
            echo "the container never became healthy" >&2
            return 1
        fi
        sleep 2
    done
    log "healthy; the image's own HEALTHCHECK agrees"
    podman healthcheck run "$NAME"
    log "one best_of_n chat completion through the openai client"
    "$PY" docker/smoke.py "http://127.0.0.1:$PORT/v1" --expect-reward ci_mounted

    log "SIGTERM: the server drains and exits 0"
    podman stop -t 60 "$NAME" >/dev/null
    local code
    code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
    podman logs "$NAME" 2>&1 | tail -5
    if [[ $code != 0 ]]; then
        echo "the container exited with $code" >&2
        return 1
    fi
    log "image OK"
}

install_tools
configure_podman
build_base
build_image
run_image
