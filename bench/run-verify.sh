#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Throughput of the userspace verification engine (not a test):
#   bench/run-verify.sh [BUILD_DIR] [SIZE_MIB]
# Creates a random object of SIZE_MIB (default 1024) in a temporary store
# under /var/tmp (a disk, so "cold" means something), then reports:
#   - raw OpenSSL SHA-256 speed on this CPU (4 KiB blocks, as verified)
#   - first open (the full Merkle tree build) with io_uring and with pread,
#     page cache warm and cold (posix_fadvise DONTNEED before each run)
#   - verified sequential reads (128 KiB) with a built tree, warm and cold,
#     one thread, then two threads (both cores)
#   - reopen with a persisted tree versus a full re-hash
# "per CPU-second" divides by the CPU time the process used, i.e. MB/s per core;
# on a shared machine it is the figure to compare (wall time depends on load).
set -euo pipefail

BUILD=${1:-build}
SIZE_MIB=${2:-1024}
BENCH=$BUILD/bench/cas-bench
TOOL=$BUILD/bench/cas-tool
[ -x "$BENCH" ] && [ -x "$TOOL" ] || { echo "build $BENCH and $TOOL first (ninja -C $BUILD)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/cfs-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "# object: $SIZE_MIB MiB of random data in $work; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no), cores: $(nproc)"
head -c "${SIZE_MIB}M" /dev/urandom >"$work/obj"
sync "$work/obj"
digest=$("$TOOL" digest "$work/obj" | cut -d' ' -f1)
size=$(stat -c %s "$work/obj")
mkdir -p "$work/store/${digest:0:2}" "$work/cache"
mv "$work/obj" "$work/store/${digest:0:2}/${digest:2}"
S="$work/store"

out=$(mktemp)
{
	"$BENCH" sha
	for io in uring pread; do
		"$BENCH" build "$S" "$digest" "$size" --io=$io --runs=2
		"$BENCH" build "$S" "$digest" "$size" --io=$io --runs=2 --cold
		"$BENCH" read "$S" "$digest" "$size" --io=$io --runs=2
		"$BENCH" read "$S" "$digest" "$size" --io=$io --runs=2 --cold
	done
	"$BENCH" read "$S" "$digest" "$size" --runs=2 --threads=2
	"$BENCH" reopen "$S" "$digest" "$size" --tree-cache="$work/cache" --runs=3
} | tee "$out"

# Ratios against the raw hash speed of this CPU.
awk '
	/^sha256-evp-reused-ctx-4k:/ {
		for (i = 1; i <= NF; i++)
			if ($i == "per") raw = $(i - 2)
	}
	/^(build|read)-/ {
		name = $1; sub(":", "", name)
		for (i = 1; i <= NF; i++)
			if ($i == "per") { percpu[name] = $(i - 2); order[++n] = name }
	}
	END {
		if (!raw) exit
		printf "# per-core throughput / raw SHA-256 (%d MB/s):\n", raw
		for (i = 1; i <= n; i++)
			printf "#   %-40s %5.0f%%\n", order[i], 100 * percpu[order[i]] / raw
	}' "$out"
rm -f "$out"
