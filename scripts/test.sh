#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The whole test suite: build with warnings as errors and ASan+UBSan, run the
# C unit tests and fuzz-corpus replays (meson test), the verification
# engine's unit test under TSan, then the pytest suite
# against real kernel and FUSE mounts.  Run as root (the tests mount).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

build=${CFS_BUILD:-build-test}
if [ ! -f "$build/build.ninja" ]; then
	meson setup "$build" --werror -Db_sanitize=address,undefined -Db_lundef=false \
		--buildtype=debugoptimized
fi
ninja -C "$build"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

meson test -C "$build" --print-errorlogs --no-suite integration

# A release build (-O3) with warnings as errors too: its optimizer warns
# about things the debug build does not see.
rel=$build-release
if [ ! -f "$rel/build.ninja" ]; then
	meson setup "$rel" --werror --buildtype=release >/dev/null
fi
ninja -C "$rel"

# The verification engine is shared by every FUSE worker thread: its unit
# test runs under ThreadSanitizer too.
tsan=$build-tsan
if [ ! -f "$tsan/build.ninja" ]; then
	meson setup "$tsan" --werror -Db_sanitize=thread --buildtype=debugoptimized >/dev/null
fi
ninja -C "$tsan" tests/test-cas
TSAN_OPTIONS=halt_on_error=1 meson test -C "$tsan" --no-rebuild --print-errorlogs test-cas

CFS_BUILD=$PWD/$build /usr/bin/python3 -m pytest tests -v -rs -p no:cacheprovider "$@"

# The daemon's tests once more over FUSE-over-io_uring, where the kernel has
# it (off until root turns it on; restored afterwards).
param=/sys/module/fuse/parameters/enable_uring
if [ -w "$param" ] && [ $# -eq 0 ]; then
	old=$(cat "$param")
	trap 'echo "$old" > "$param"' EXIT
	echo Y > "$param"
	CFS_BUILD=$PWD/$build CFS_TRANSPORT=io_uring /usr/bin/python3 -m pytest -v -rs -p no:cacheprovider \
		tests/test_daemon.py tests/test_daemon_user.py tests/test_daemon_stress.py \
		tests/test_datapath.py tests/test_metadata.py tests/test_faults.py tests/test_signature.py
	echo "$old" > "$param"
	trap - EXIT
fi
