#!/usr/bin/env bash
# Kiln's main job on a fresh Debian machine: set the machine up, build Kiln, and build
# examples/hello with `kiln build` (real containers, overlay snapshots, cache), writing the result
# as a directory and as an OCI image tarball.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
npm run build --silent

# No registry is reachable from here: serve the fixture busybox image from a local registry that
# lives as long as this script.
coproc REG { node scripts/local-registry.mjs; }
read -r ADDR <&"${REG[0]}"

out="${KILN_DEMO_OUT:-$(mktemp -d -t kiln-demo-XXXXXX)}"
echo "==> kiln build examples/hello (base image $ADDR/busybox:latest)" >&2
./cli/bin/kiln.js build --progress plain \
  --build-arg "BASE=$ADDR/busybox:latest" \
  --output "type=local,dest=$out/rootfs" \
  --output "type=oci,dest=$out/hello.tar,name=kiln/hello:latest" \
  examples/hello

echo
echo "==> result: $out"
echo "    rootfs/message.txt: $(cat "$out/rootfs/message.txt")"
echo "    hello.tar: OCI image, $(du -h "$out/hello.tar" | cut -f1), $(tar -tf "$out/hello.tar" | grep -c '^blobs/') blobs"
echo
echo "==> the local farm stays up for the next build (it stops after 15 idle minutes):"
./cli/bin/kiln.js farm status || true
echo "    ./cli/bin/kiln.js farm stop   stops it now"
