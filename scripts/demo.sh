#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The main job on a fresh machine: install dependencies, build, turn a real
# tree (default /usr/share/doc) into a composefs image plus object store, and
# mount it with composefs-fuse, checked against the image's digest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build

src=${1:-/usr/share/doc}
demo=${CFS_DEMO_DIR:-/var/tmp/composefs-demo}
mnt=$demo/mnt
mkdir -p "$demo/objects" "$mnt"
if mountpoint -q "$mnt"; then
	fusermount3 -u "$mnt"
fi

echo "demo: building $demo/demo.cfs from $src"
digest=$(build/cli/mkcomposefs --digest-store="$demo/objects" --print-digest "$src" "$demo/demo.cfs")
echo "demo: image digest $digest"

build/daemon/composefs-fuse -o "basedir=$demo/objects,digest=$digest" "$demo/demo.cfs" "$mnt"
echo "demo: mounted at $mnt"
findmnt "$mnt" || true
echo "demo: $(find "$mnt" | wc -l) entries; comparing with $src ..."
if diff -r --no-dereference "$src" "$mnt" >/dev/null; then
	echo "demo: $mnt is identical to $src (every byte verified against its fs-verity digest)"
else
	echo "demo: DIFFERENCES between $src and $mnt" >&2
	exit 1
fi
echo "demo: unmount with: fusermount3 -u $mnt"
