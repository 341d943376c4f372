#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Side-by-side benchmark: the same composefs image mounted by the kernel
(erofs + overlayfs, no verification without fs-verity) and by composefs-fuse
(userspace per-block verification), measured in one run and reported as
ratios.  Run as root from the repository: bench/mount-bench.py [--build DIR]

Workloads:
  walk       lstat + listxattr of every entry (metadata path)
  readdir    listing of a 10 000-entry directory, repeated
  seq-cold   sequential read of large files after dropping the page cache
             (FUSE: first open builds and checks the Merkle tree)
  seq-warm   the same read again (FUSE: served from the kernel page cache)
  small      read every small/medium file (open/read/close per file)
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import conftest  # noqa: E402  (mount helpers shared with the tests)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def make_tree(root, big_mib):
    os.makedirs(root)
    big = os.path.join(root, "big")
    os.mkdir(big)
    chunk = os.urandom(1 << 20)
    for i in range(4):
        with open(os.path.join(big, f"file{i}"), "wb") as f:
            for j in range(big_mib // 4):
                f.write(chunk[j % 7:] + chunk[:j % 7])
    many = os.path.join(root, "many")
    os.mkdir(many)
    for i in range(10000):
        with open(os.path.join(many, f"entry-{i:05d}"), "wb") as f:
            f.write(os.urandom(32 + (i % 5) * 1000))
    src = "/usr/share/doc"
    if os.path.isdir(src):
        shutil.copytree(src, os.path.join(root, "doc"), symlinks=True)


def t(fn, repeat=1):
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        el = time.perf_counter() - start
        best = el if best is None or el < best else best
    return best


def walk(mnt):
    n = 0
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            os.lstat(p)
            try:
                os.listxattr(p, follow_symlinks=False)
            except OSError:
                pass
            n += 1
    return n


def readdir(mnt):
    for _ in range(20):
        os.listdir(os.path.join(mnt, "many"))


def read_files(paths):
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                total += len(b)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("CFS_BUILD", "build"))
    ap.add_argument("--big-mib", type=int, default=1024, help="total size of the large files")
    ap.add_argument("--options", default="", help="extra composefs-fuse -o options")
    args = ap.parse_args()
    os.environ["CFS_BUILD"] = os.path.abspath(args.build)
    conftest.BUILD = os.environ["CFS_BUILD"]

    work = tempfile.mkdtemp(prefix="cfs-bench-", dir="/var/tmp")
    try:
        tree, objs, img = os.path.join(work, "tree"), os.path.join(work, "objects"), os.path.join(work, "img.cfs")
        make_tree(tree, args.big_mib)
        start = time.perf_counter()
        conftest.run([conftest.tool("mkcomposefs"), f"--digest-store={objs}", tree, img])
        print(f"mkcomposefs --digest-store: {time.perf_counter() - start:.2f} s for {args.big_mib} MiB + small files")

        results = {}
        opts = [o for o in args.options.split(",") if o] + [f"tree_cache={work}/treecache"]
        for kind in ("kernel", "fuse"):
            ctx = conftest.kernel_mount(img, objs) if kind == "kernel" else \
                conftest.fuse_mount(img, objs, options=opts)
            with ctx as m:
                mnt = m if kind == "kernel" else m[0]
                big = sorted(os.path.join(mnt, "big", n) for n in os.listdir(os.path.join(mnt, "big")))
                small = []
                for dirpath, _, files in os.walk(os.path.join(mnt, "doc")):
                    small += [os.path.join(dirpath, f) for f in files
                              if os.path.isfile(os.path.join(dirpath, f)) and not os.path.islink(os.path.join(dirpath, f))]
                r = {}
                drop_caches()
                r["walk-cold"] = t(lambda: walk(mnt))
                r["walk-warm"] = t(lambda: walk(mnt), 3)
                r["readdir"] = t(lambda: readdir(mnt), 3)
                drop_caches()
                size = sum(os.path.getsize(p) for p in big)
                r["seq-cold"] = t(lambda: read_files(big))
                r["seq-warm"] = t(lambda: read_files(big), 2)
                drop_caches()
                r["small-cold"] = t(lambda: read_files(small))
                r["small-warm"] = t(lambda: read_files(small), 2)
                results[kind] = r
        print(f"\n{'workload':<12} {'kernel s':>10} {'fuse s':>10} {'fuse/kernel':>12}")
        for k in results["kernel"]:
            a, b = results["kernel"][k], results["fuse"][k]
            extra = ""
            if k.startswith("seq"):
                extra = f"   kernel {size / a / 1e6:8.0f} MB/s  fuse {size / b / 1e6:8.0f} MB/s"
            print(f"{k:<12} {a:10.3f} {b:10.3f} {b / a:12.2f}{extra}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
