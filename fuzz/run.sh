#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Run every libFuzzer target (or the ones named) for SECONDS each, one
# after the other, from a copy of its seed corpus; new inputs and crashes
# stay in the work directory.  Builds build-fuzz with clang first.
#   fuzz/run.sh [-t SECONDS] [-w WORKDIR] [TARGET...]
#   fuzz/run.sh -t 1800 signature tree redirect
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=600
work=${TMPDIR:-/var/tmp}/cfs-fuzz
while getopts "t:w:" o; do
	case $o in
	t) seconds=$OPTARG ;;
	w) work=$OPTARG ;;
	*) echo "usage: $0 [-t SECONDS] [-w WORKDIR] [TARGET...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(image dump signature tree redirect daemon)

if [ ! -f build-fuzz/build.ninja ]; then
	CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C build-fuzz $(printf 'fuzz/fuzz-%s ' "${targets[@]}")

status=0
for t in "${targets[@]}"; do
	dir=$work/$t
	mkdir -p "$dir/corpus" "$dir/artifacts"
	cp -n fuzz/corpus/"$t"/* "$dir/corpus/" 2>/dev/null || true
	echo "== fuzz-$t for ${seconds}s (corpus $dir/corpus)"
	if ! ASAN_OPTIONS=detect_leaks=1 build-fuzz/fuzz/fuzz-"$t" -max_total_time="$seconds" \
		-print_final_stats=1 -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log" 2>&1; then
		echo "fuzz-$t FAILED: see $dir/log and $dir/artifacts/" >&2
		status=1
	fi
	grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$dir/log" || true
done
exit $status
