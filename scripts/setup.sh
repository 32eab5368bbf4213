#!/usr/bin/env bash
# Machine setup for Kiln's build farm and tests (Debian 12). Idempotent, and quick when everything
# is already in place. Run as root (or as a user with sudo).
#
#   1. Debian packages: nats-server, crun, runc, docker-registry, skopeo, umoci, qemu-user-static,
#      busybox-static, gcc (for @kiln/sys's addon), the foreign architecture's cross gcc (the
#      addon of the images' other platform), debootstrap (the images' Debian base), docker.io and
#      docker-compose (deploy/compose/smoke.sh; never started here: no service starts during the
#      install), ... (apt-get only when something is missing)
#      and the `kiln` user with subordinate ids (rootless workers)
#   2. the busybox-static binary of the other architecture (amd64 <-> arm64), extracted from the
#      Debian package to /usr/local/bin/busybox-<arch> (the two arches' packages conflict)
#   3. host fixes, only where needed: the hugetlb cgroup v1 mount that crun 1.8 needs on hybrid
#      cgroup hosts; binfmt_misc mounted and qemu registered (F flag) for the foreign arch;
#      /dev/net/tun 0666 as udev makes it (slirp4netns for rootless workers)
#   4. npm dependencies (npm ci on a clean tree, npm install when the lockfile changed)
#   5. the fixture base images (fixtures/out/busybox-oci, a linux/amd64 + linux/arm64 OCI index)
#
# Environment: KILN_SETUP_SKIP_NPM=1 skips step 4, KILN_SETUP_SKIP_FIXTURES=1 skips step 5.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "run as root (or install sudo)"
  SUDO=(sudo)
fi
as_root() { "${SUDO[@]}" "$@"; }

export DEBIAN_FRONTEND=noninteractive

NATIVE_ARCH="$(dpkg --print-architecture)"
case "$NATIVE_ARCH" in
  amd64) FOREIGN_ARCH=arm64; QEMU_NAME=qemu-aarch64; CROSS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
  arm64) FOREIGN_ARCH=amd64; QEMU_NAME=qemu-x86_64; CROSS=(gcc-x86-64-linux-gnu libc6-dev-amd64-cross) ;;
  *) die "unsupported host architecture: $NATIVE_ARCH (need amd64 or arm64)" ;;
esac

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
PACKAGES=(
  nats-server crun runc docker-registry skopeo umoci qemu-user-static
  busybox-static git iproute2 iptables uidmap slirp4netns fuse-overlayfs ca-certificates xz-utils zstd bzip2 tar attr
  gcc libc6-dev openssl docker-compose debootstrap docker.io "${CROSS[@]}"
)

missing_packages() {
  local p st
  for p in "$@"; do
    st="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
    [ "${st:0:2}" = "ii" ] || printf '%s\n' "$p"
  done
}

APT_UPDATED=0
apt_update() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
}

if ! dpkg --print-foreign-architectures | grep -qx "$FOREIGN_ARCH"; then
  log "dpkg --add-architecture $FOREIGN_ARCH"
  as_root dpkg --add-architecture "$FOREIGN_ARCH"
  APT_UPDATED=0
  NEED_UPDATE_FOR_FOREIGN=1
else
  NEED_UPDATE_FOR_FOREIGN=0
fi

mapfile -t MISSING < <(missing_packages "${PACKAGES[@]}")
if [ "${#MISSING[@]}" -gt 0 ]; then
  apt_update
  # No daemon may start from a package's install (docker.io's would take over the host's
  # iptables): a policy-rc.d that denies every start, for the install only, unless one exists.
  POLICY=/usr/sbin/policy-rc.d
  OWN_POLICY=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY" >/dev/null
    as_root chmod 0755 "$POLICY"
    OWN_POLICY=1
  fi
  log "apt-get install ${MISSING[*]}"
  rc=0
  as_root apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null || rc=$?
  [ "$OWN_POLICY" -eq 0 ] || as_root rm -f "$POLICY"
  [ "$rc" -eq 0 ] || die "apt-get install failed ($rc)"
fi

# Node-API headers for @kiln/sys's addon (libs/sys/scripts/build-native.mjs looks in the same
# places): Node's own install ships them; Debian's are in libnode-dev (Node-API is ABI-stable, so
# any version's headers build an addon for this Node).
NODE_PREFIX="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
if [ ! -f "$NODE_PREFIX/include/node/node_api.h" ] && [ ! -f /usr/include/node/node_api.h ] &&
  [ ! -f /usr/local/include/node/node_api.h ]; then
  apt_update
  log "apt-get install libnode-dev (Node-API headers)"
  as_root apt-get install -y -qq --no-install-recommends libnode-dev >/dev/null
fi

for bin in nats-server crun runc docker-registry skopeo umoci busybox cc debootstrap dockerd; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || die "$bin not found after install"
done

# 1b. The `kiln` user with 65536 subordinate uids and gids (/etc/subuid, /etc/subgid): a rootless
# worker runs as it (docs/sandbox.md); a root worker's `--userns-remap kiln` uses its range.
if ! id kiln >/dev/null 2>&1; then
  log "useradd kiln (rootless workers)"
  as_root useradd --create-home --shell /usr/sbin/nologin kiln
fi
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^kiln:' "$f" 2>/dev/null; then
    # The first free 65536-id range from 100000 up, past every range already given.
    start="$(awk -F: 'BEGIN { m = 100000 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$f" 2>/dev/null || echo 100000)"
    log "giving kiln the ids $start-$((start + 65535)) in $f"
    echo "kiln:$start:65536" | as_root tee -a "$f" >/dev/null
  fi
done
for bin in newuidmap newgidmap; do
  command -v "$bin" >/dev/null 2>&1 || die "$bin not found (package uidmap)"
done
# The sandbox network of a worker in a user namespace is slirp4netns, which opens /dev/net/tun as
# that namespace's root: not the host's root, so the node needs udev's usual mode (0666; a host
# booted without udev, as these, has 0600). Opening it gives nothing without CAP_NET_ADMIN.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != "666" ]; then
  log "chmod 0666 /dev/net/tun (udev's default: rootless sandbox networks)"
  as_root chmod 0666 /dev/net/tun
fi

# ---------------------------------------------------------------------------------------------
# 2. busybox-static of the foreign architecture
FOREIGN_BUSYBOX="/usr/local/bin/busybox-$FOREIGN_ARCH"
if [ ! -x "$FOREIGN_BUSYBOX" ]; then
  if [ "$NEED_UPDATE_FOR_FOREIGN" -eq 1 ] || ! apt-cache show "busybox-static:$FOREIGN_ARCH" >/dev/null 2>&1; then
    apt_update
  fi
  tmp="$(mktemp -d)"
  log "apt-get download busybox-static:$FOREIGN_ARCH"
  # (as root, apt warns that the download is unsandboxed: expected, filtered out)
  (cd "$tmp" && as_root apt-get download -qq "busybox-static:$FOREIGN_ARCH" 2>&1) |
    { grep -v 'unsandboxed' >&2 || true; }
  deb="$(ls "$tmp"/busybox-static_*_"$FOREIGN_ARCH".deb 2>/dev/null | head -1)"
  [ -n "$deb" ] || die "apt-get download busybox-static:$FOREIGN_ARCH failed"
  dpkg-deb -x "$deb" "$tmp/x"
  as_root install -m 0755 "$tmp/x/bin/busybox" "$FOREIGN_BUSYBOX"
  rm -rf "$tmp"
fi
# The native one comes from the busybox-static package; give it the same arch-suffixed name.
NATIVE_BUSYBOX="/usr/local/bin/busybox-$NATIVE_ARCH"
if [ ! -e "$NATIVE_BUSYBOX" ]; then
  as_root ln -sf /bin/busybox "$NATIVE_BUSYBOX"
fi

# ---------------------------------------------------------------------------------------------
# 3a. crun on hybrid cgroup hosts: crun 1.8 refuses to run while a controller (hugetlb here) is
# enabled on the v2 hierarchy of a hybrid setup; mounting it as v1 moves it there.
crun_probe() {
  local dir rc
  dir="$(mktemp -d)"
  mkdir -p "$dir/rootfs/bin"
  cp /bin/busybox "$dir/rootfs/bin/busybox"
  ln -s busybox "$dir/rootfs/bin/true"
  (cd "$dir" && crun spec >/dev/null 2>&1)
  sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"true"/' "$dir/config.json"
  rc=0
  (cd "$dir" && timeout 30 crun run "kiln-setup-probe-$$" </dev/null >"$dir/out" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ]; then
    sed 's/^/[setup]   crun: /' "$dir/out" >&2 || true
    crun delete -f "kiln-setup-probe-$$" >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  return "$rc"
}

if [ "$(id -u)" -eq 0 ]; then
  if ! crun_probe 2>/dev/null; then
    fixed=0
    if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
      for ctl in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        if [ ! -d "/sys/fs/cgroup/$ctl" ] || ! mountpoint -q "/sys/fs/cgroup/$ctl"; then
          log "mounting the $ctl cgroup controller as v1 (hybrid cgroups; crun needs it)"
          mkdir -p "/sys/fs/cgroup/$ctl"
          if mount -t cgroup -o "$ctl" cgroup "/sys/fs/cgroup/$ctl"; then
            fixed=1
          else
            log "could not mount $ctl as cgroup v1"
          fi
        fi
      done
    fi
    if [ "$fixed" -eq 0 ] && ! mountpoint -q /sys/fs/cgroup/hugetlb 2>/dev/null; then
      log "mounting the hugetlb cgroup controller as v1"
      mkdir -p /sys/fs/cgroup/hugetlb
      mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb || true
    fi
    crun_probe || die "crun still cannot run a container (see the messages above)"
  fi
else
  log "not root: skipping the crun probe"
fi

# 3b. binfmt_misc + qemu for the foreign architecture (no systemd here: register by hand).
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
  log "mounting binfmt_misc"
  as_root mount -t binfmt_misc none "$BINFMT"
fi
if [ "$(cat "$BINFMT/status")" != "enabled" ]; then
  echo 1 | as_root tee "$BINFMT/status" >/dev/null
fi
QEMU_CONF="/usr/lib/binfmt.d/$QEMU_NAME.conf"
[ -f "$QEMU_CONF" ] || die "$QEMU_CONF missing (qemu-user-static not installed?)"
register_line="$(grep -v '^[[:space:]]*#' "$QEMU_CONF" | grep -m1 ':')"
# Make sure of the F (fix binary) flag, so the interpreter works inside containers' mount namespaces.
flags="${register_line##*:}"
case "$flags" in *F*) ;; *) register_line="${register_line}F" ;; esac
if [ -e "$BINFMT/$QEMU_NAME" ]; then
  if ! grep -q '^flags:.*F' "$BINFMT/$QEMU_NAME" || ! grep -qx enabled <(head -1 "$BINFMT/$QEMU_NAME"); then
    log "re-registering $QEMU_NAME with the F flag"
    echo -1 | as_root tee "$BINFMT/$QEMU_NAME" >/dev/null
  fi
fi
if [ ! -e "$BINFMT/$QEMU_NAME" ]; then
  log "registering $QEMU_NAME in binfmt_misc"
  printf '%s\n' "$register_line" | as_root tee "$BINFMT/register" >/dev/null
fi
out="$("$FOREIGN_BUSYBOX" echo ok 2>&1)" || die "$FOREIGN_BUSYBOX does not run through binfmt: $out"
[ "$out" = "ok" ] || die "$FOREIGN_BUSYBOX echo ok printed: $out"

# ---------------------------------------------------------------------------------------------
# 4. npm dependencies
if [ "${KILN_SETUP_SKIP_NPM:-0}" != "1" ]; then
  wait_for_npm() {
    local i=0
    while pgrep -x npm >/dev/null 2>&1; do
      [ "$i" -eq 0 ] && log "waiting for another npm process to finish"
      i=$((i + 1))
      [ "$i" -gt 600 ] && die "another npm process has been running for 10 minutes"
      sleep 1
    done
  }
  STAMP=node_modules/.kiln-setup-lock.sha256
  lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ ! -d node_modules ]; then
    wait_for_npm
    log "npm ci"
    npm ci --no-audit --no-fund --loglevel=error
    printf '%s\n' "$lock_sum" >"$STAMP"
  elif [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$lock_sum" ]; then
    wait_for_npm
    log "npm install (package-lock.json changed)"
    npm install --no-audit --no-fund --loglevel=error
    sha256sum package-lock.json | cut -d' ' -f1 >"$STAMP"
  fi
fi

# ---------------------------------------------------------------------------------------------
# 5. fixture images
if [ "${KILN_SETUP_SKIP_FIXTURES:-0}" != "1" ]; then
  node scripts/fixtures/build-busybox.mjs --out fixtures/out/busybox-oci >/dev/null
fi

log "ok (native $NATIVE_ARCH, foreign $FOREIGN_ARCH through $QEMU_NAME)"
