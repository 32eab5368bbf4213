#!/usr/bin/env bash
# Brings deploy/compose up for real on this machine and runs one `kiln build --addr` through it:
#
#   1. the images, built by `kiln build` (deploy/images/build.mjs --docker-out; cached), loaded
#      into a Docker engine of its own: Debian's dockerd with its state in a temp dir, on its own
#      socket, with --iptables=false --ip6tables=false --ip-masq=false --bridge=none (it never
#      touches the host's firewall; the farm's network is a plain bridge, no NAT, no way out);
#   2. the farm's secrets in the temp dir: NATS users (scripts/nats-auth.mjs), a CA and the
#      scheduler's TLS certificate (openssl), a token, farm.env;
#   3. `docker-compose up` of compose.yaml + compose.s3rver.yaml (s3rver for MinIO, whose image
#      cannot be had here), waiting until every service's health check passes;
#   4. `kiln build --addr 127.0.0.1:PORT --tlscacert --token-file` of a two-platform Dockerfile
#      whose RUN prints `uname -m` (the arm64 worker runs it through the host's qemu binfmt);
#      the outputs must say x86_64 and aarch64; NATS's /healthz and the scheduler's /metrics answer;
#   5. always: `docker-compose down -v`, dockerd stopped, the temp dir removed.
#
# Needs root, `bash scripts/setup.sh` (docker.io, docker-compose, debootstrap) and `npm run build`.
# Environment: KILN_IMAGES_CACHE (build.mjs's cache), KILN_SMOKE_SKIP_BUILD=1 (use the tarballs
# already in $KILN_IMAGES_CACHE/docker), KILN_SMOKE_KEEP=1 (leave the farm up; prints how to
# stop it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${KILN_IMAGES_CACHE:-/var/cache/kiln/images}"
IMAGES=(nats s3rver scheduler cache-store worker)
log() { printf '[smoke] %s\n' "$*" >&2; }
die() { printf '[smoke] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (dockerd)"
for b in dockerd docker-compose openssl; do
  command -v "$b" >/dev/null || die "$b missing: run bash scripts/setup.sh"
done
DOCKER=/usr/bin/docker # Debian's client, matching its dockerd

WORK="$(mktemp -d /tmp/kiln-smoke.XXXXXX)"
export DOCKER_HOST="unix://$WORK/docker.sock"
PROJECT="kiln-smoke-$$"
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/deploy/compose/compose.yaml"
  -f "$ROOT/deploy/compose/compose.s3rver.yaml")
# A bounding set without every capability (CAP_SYS_RESOURCE is dropped in some sandboxes) makes
# `privileged: true` fail in runc: then the workers get every capability there is instead.
if [ "$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)" != "$(printf '%016x' $(((1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1)))" ]; then
  log "the capability bounding set is not full: unprivileged workers (compose.nocap.yaml)"
  COMPOSE+=(-f "$ROOT/deploy/compose/compose.nocap.yaml")
fi
COMPOSE+=(--env-file "$WORK/farm.env")

cleanup() {
  local rc=$?
  if [ "${KILN_SMOKE_KEEP:-0}" = "1" ]; then
    log "left up: DOCKER_HOST=$DOCKER_HOST ${COMPOSE[*]} down -v; kill \$(cat $WORK/docker.pid)"
    exit "$rc"
  fi
  if [ -S "$WORK/docker.sock" ]; then
    [ "$rc" -eq 0 ] || "${COMPOSE[@]}" logs --no-color --tail 40 >&2 2>&1 || true
    log "docker-compose down -v"
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || log "compose down failed"
  fi
  if [ -f "$WORK/docker.pid" ]; then
    local pid
    pid="$(cat "$WORK/docker.pid")"
    log "stopping dockerd ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd still up: SIGKILL"; kill -9 "$pid" || true; }
  fi
  # dockerd unmounts its overlays on exit; anything left under WORK is unmounted first.
  { grep -o " $WORK[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT INT TERM

free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

# 1. images ------------------------------------------------------------------------------------
if [ "${KILN_SMOKE_SKIP_BUILD:-0}" != "1" ]; then
  log "building the images (deploy/images/build.mjs)"
  node "$ROOT/deploy/images/build.mjs" --images "$(IFS=,; echo "${IMAGES[*]}")" \
    --docker-out "$CACHE/docker" >&2
fi
for i in "${IMAGES[@]}"; do [ -f "$CACHE/docker/$i.tar" ] || die "$CACHE/docker/$i.tar missing"; done

log "starting dockerd (state in $WORK, no iptables, no default bridge)"
dockerd --data-root "$WORK/docker" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" \
  -H "$DOCKER_HOST" --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
  --storage-driver=overlay2 >"$WORK/dockerd.log" 2>&1 &
for _ in $(seq 1 120); do
  "$DOCKER" version >/dev/null 2>&1 && break
  kill -0 $! 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
  sleep 0.5
done
"$DOCKER" version >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }

for i in "${IMAGES[@]}"; do
  "$DOCKER" load -q -i "$CACHE/docker/$i.tar" >&2
  "$DOCKER" tag "kiln/$i:latest" "kiln.smoke/kiln/$i:latest"
done

# 2. secrets -----------------------------------------------------------------------------------
S="$WORK/secrets"
mkdir -p "$S/tls"
node "$ROOT/scripts/nats-auth.mjs" --out "$S/nats" --worker amd64-1 --worker arm64-1 >/dev/null
cp "$ROOT/deploy/nats/nats-server.conf" "$S/nats/"
pw() { sed -n 's/^KILN_NATS_PASSWORD=//p' "$S/nats/$1.env"; }
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kiln-smoke-ca \
  -keyout "$S/tls/ca.key" -out "$S/tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=scheduler -keyout "$S/tls/server.key" \
  -out "$S/tls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:scheduler,DNS:localhost,IP:127.0.0.1\n' >"$S/tls/ext"
openssl x509 -req -in "$S/tls/server.csr" -CA "$S/tls/ca.crt" -CAkey "$S/tls/ca.key" \
  -CAcreateserial -days 1 -extfile "$S/tls/ext" -out "$S/tls/server.crt" 2>/dev/null
TOKEN="$(openssl rand -hex 24)"
printf 'smoke:%s\n' "$TOKEN" >"$S/tokens"
printf '%s\n' "$TOKEN" >"$WORK/token"
chmod 0600 "$WORK/token"
# The services run as 65534 and read their secrets: theirs, mode 0600.
chown -R 65534:65534 "$S/nats" "$S/tls" "$S/tokens"
chmod 0600 "$S/tokens" "$S/tls/server.key"

PORT="$(free_port)"
MON_PORT="$(free_port)"
umask 077
cat >"$WORK/farm.env" <<EOF
KILN_REGISTRY=kiln.smoke
KILN_SECRETS_DIR=$S
KILN_SCHEDULER_PUBLISH=127.0.0.1:$PORT
KILN_NATS_MONITOR_PORT=$MON_PORT
KILN_S3_ACCESS_KEY=S3RVER
KILN_S3_SECRET_KEY=S3RVER
KILN_NATS_SCHEDULER_PASSWORD=$(pw scheduler)
KILN_NATS_CACHE_STORE_PASSWORD=$(pw cache-store)
KILN_NATS_WORKER_AMD64_PASSWORD=$(pw worker-amd64-1)
KILN_NATS_WORKER_ARM64_PASSWORD=$(pw worker-arm64-1)
EOF
umask 022

# 3. up ----------------------------------------------------------------------------------------
log "docker-compose up -d ($PROJECT)"
"${COMPOSE[@]}" up -d >&2
SERVICES=(nats minio scheduler cache-store worker-amd64 worker-arm64)
health() { "$DOCKER" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$("${COMPOSE[@]}" ps -q "$1")" 2>/dev/null || echo missing; }
deadline=$((SECONDS + ${KILN_SMOKE_HEALTH_TIMEOUT:-240}))
while :; do
  states=""
  all=1
  for s in "${SERVICES[@]}"; do
    h="$(health "$s")"
    states="$states $s=$h"
    [ "$h" = healthy ] || all=0
  done
  [ "$all" -eq 1 ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    for s in worker-amd64 worker-arm64; do
      "${COMPOSE[@]}" exec -T "$s" /usr/local/bin/node -e \
        "fetch('http://127.0.0.1:9090/readyz').then(async (r) => console.error('[smoke] $s /readyz', r.status, await r.text()), (e) => console.error('[smoke] $s /readyz:', String(e)))" || true
    done
    die "not healthy after ${KILN_SMOKE_HEALTH_TIMEOUT:-240} s:$states"
  fi
  sleep 2
done
log "healthy:$states"

# 4. a build through the farm ------------------------------------------------------------------
CTX="$WORK/ctx"
mkdir -p "$CTX"
cp /usr/local/bin/busybox-amd64 "$CTX/busybox-amd64"
cp /usr/local/bin/busybox-arm64 "$CTX/busybox-arm64"
cat >"$CTX/Dockerfile" <<'EOF'
FROM scratch
ARG TARGETARCH
COPY busybox-${TARGETARCH} /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox uname -m > /arch"]
EOF
log "kiln build --addr 127.0.0.1:$PORT (TLS, token) --platform linux/amd64,linux/arm64"
node "$ROOT/cli/bin/kiln.js" build --progress plain --addr "127.0.0.1:$PORT" \
  --tlscacert "$S/tls/ca.crt" --token-file "$WORK/token" \
  --platform linux/amd64,linux/arm64 -o "type=local,dest=$WORK/out" "$CTX" >&2
amd="$(cat "$WORK/out/linux_amd64/arch")"
arm="$(cat "$WORK/out/linux_arm64/arch")"
[ "$amd" = x86_64 ] || die "linux/amd64 RUN printed '$amd'"
[ "$arm" = aarch64 ] || die "linux/arm64 RUN printed '$arm'"
log "build ok: linux/amd64 ran on $amd, linux/arm64 on $arm"

node -e "fetch('http://127.0.0.1:$MON_PORT/healthz?js-enabled-only=true').then(async (r) => { console.error('[smoke] nats /healthz', r.status, await r.text()); process.exit(r.ok ? 0 : 1) })"
metrics="$("${COMPOSE[@]}" exec -T scheduler /usr/local/bin/node -e \
  "fetch('http://127.0.0.1:9090/metrics').then(async (r) => process.stdout.write(await r.text()))")"
line="$(grep '^kiln_builds_finished_total' <<<"$metrics" || true)"
[ -n "$line" ] || die "the scheduler's /metrics has no kiln_builds_finished_total"
log "scheduler /metrics: $line"
log "ok"
