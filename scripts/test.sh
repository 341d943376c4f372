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

meson test -C "$build" --print-errorlogs

# The verification engine is shared by every FUSE worker thread: its unit
# test runs under ThreadSanitizer too.
tsan=$build-tsan
if [ ! -f "$tsan/build.ninja" ]; then
	meson setup "$tsan" --werror -Db_sanitize=thread --buildtype=debugoptimized >/dev/null
fi
ninja -C "$tsan" tests/test-cas
TSAN_OPTIONS=halt_on_error=1 meson test -C "$tsan" --no-rebuild --print-errorlogs test-cas

CFS_BUILD=$PWD/$build /usr/bin/python3 -m pytest tests -v -rs -p no:cacheprovider "$@"
