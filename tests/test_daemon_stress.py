# SPDX-License-Identifier: LGPL-2.1-or-later
"""16 parallel readers over a whole tree for a minute (CFS_STRESS_SECONDS):
every read verified against the source, no error, no sanitizer report on the
daemon's stderr (checked by fuse_mount), and the daemon's RSS bounded."""
import hashlib
import os
import random
import stat
import threading
import time

import pytest

from conftest import fuse_mount, needs_root, run, tool
from test_daemon import build_image

pytestmark = [needs_root,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")]

READERS = 16
SECONDS = float(os.environ.get("CFS_STRESS_SECONDS", "60"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def is_asan(binary):
    out = run(["ldd", binary], check=False).stdout.decode()
    return "libasan" in out


def test_parallel_readers(tmp_path):
    src = tmp_path / "src"
    if os.path.isdir("/usr/share/doc"):
        run(["cp", "-a", "/usr/share/doc", str(src)])
    else:
        src.mkdir()
    rnd = random.Random(7)
    big = src / "big"
    big.mkdir()
    for i in range(4):
        with open(big / f"f{i}", "wb") as f:
            f.write(rnd.randbytes((24 << 20) + i * 4097))
    files, dirs = {}, []
    for dirpath, dirnames, filenames in os.walk(src):
        dirs.append(os.path.relpath(dirpath, src))
        for n in filenames:
            p = os.path.join(dirpath, n)
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as f:
                    files[os.path.relpath(p, src)] = hashlib.sha256(f.read()).hexdigest()
    assert len(files) > 100
    img, objs = build_image(str(src), str(tmp_path))
    names = sorted(files)
    asan = is_asan(tool("composefs-fuse"))

    stats = str(tmp_path / "stats")
    # xattrs=always: the image has none, listxattr still reaches the daemon
    with fuse_mount(img, objs, options=["tree_cache=none", "tree_cache_size=4M", "timeout=1",
                                        "xattrs=always", f"stats_file={stats}"]) as (mnt, proc):
        errors, counts = [], {"files": 0, "bytes": 0, "dirs": 0}
        lock = threading.Lock()
        deadline = time.monotonic() + SECONDS

        def reader(seed):
            r = random.Random(seed)
            order = names[:]
            r.shuffle(order)
            i = 0
            while time.monotonic() < deadline and not errors:
                rel = order[i % len(order)]
                i += 1
                p = os.path.join(mnt, rel)
                try:
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        h = hashlib.sha256()
                        n = 0
                        while True:
                            b = os.read(fd, 1 << 17)
                            if not b:
                                break
                            h.update(b)
                            n += len(b)
                        # drop our pages so the next pass reaches the daemon
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
                    if h.hexdigest() != files[rel]:
                        raise AssertionError(f"{rel}: wrong content")
                    if i % 16 == 0:
                        d = os.path.join(mnt, dirs[r.randrange(len(dirs))])
                        for e in os.scandir(d):
                            e.stat(follow_symlinks=False)
                            os.listxattr(e.path, follow_symlinks=False)
                        with lock:
                            counts["dirs"] += 1
                    with lock:
                        counts["files"] += 1
                        counts["bytes"] += n
                except Exception as e:       # noqa: BLE001 - reported below
                    with lock:
                        errors.append(f"{rel}: {e!r}")

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(READERS)]
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic(), rss_kib(proc.pid)))
            time.sleep(1)
        for t in threads:
            t.join()
        final_rss = rss_kib(proc.pid)

    assert not errors, errors[:5]
    assert counts["files"] > len(names) / 4, counts
    st = dict(l.split() for l in open(stats))
    # the readers really exercised the daemon's verified read path
    assert int(st["read_bytes"]) > 64 << 20, st
    assert int(st["read_errors"]) == 0 and int(st["open_errors"]) == 0, st
    peak = max(s[1] for s in samples)
    print(f"\nstress: {counts['files']} files, {counts['bytes'] >> 20} MiB, {counts['dirs']} dirs "
          f"in {SECONDS:.0f}s by {READERS} readers; daemon RSS peak {peak >> 10} MiB, "
          f"final {final_rss >> 10} MiB{' (ASan)' if asan else ''}; daemon served "
          f"{int(st['reads'])} reads, {int(st['read_bytes']) >> 20} MiB")
    limit = (1 << 20) if asan else (256 << 10)       # KiB
    assert peak < limit, samples
    if not asan and len(samples) > 20:
        # no steady growth: the second half stays near the first half's peak
        half = len(samples) // 2
        first = max(s[1] for s in samples[:half])
        second = max(s[1] for s in samples[half:])
        assert second <= first + (32 << 10), samples
