#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Write the seed images of fuzz-daemon into fuzz/corpus/daemon/.

fuzz-daemon.c makes its object store from a generator (object_byte()); the
images here point at those objects: a directory tree built from files with
the same content (mkcomposefs --digest-store), and dump files with what a
tree cannot have (a size or digest that does not match its object, a
missing object, no digest, a redirect that leaves the store).  The last
byte of an input picks the daemon's options; each image is written once
as made and once with the last byte set for verity=require, xattrs=always,
pread and one thread.

  fuzz/daemon-seeds.py BUILDDIR     (uses BUILDDIR/cli/mkcomposefs)
"""
import os
import shutil
import subprocess
import sys
import tempfile

SIZES = [1, 100, 4096, 4097, 65541, 200000, (16 << 20) + 12345, 70000]  # the last stored tampered


def object_bytes(k):
    n = SIZES[k]
    return bytes((i * 131 + k * 29 + (i >> 12) * 7) & 0xFF for i in range(n))


def main():
    build = sys.argv[1]
    mkcfs = os.path.join(build, "cli", "mkcomposefs")
    info = os.path.join(build, "cli", "composefs-info")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "daemon")
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="cfs-seeds-")
    try:
        src = os.path.join(tmp, "src")
        store = os.path.join(tmp, "store")
        os.makedirs(os.path.join(src, "d", "e"))
        for k in range(len(SIZES)):
            with open(os.path.join(src, "obj%d" % k), "wb") as f:
                f.write(object_bytes(k))
        os.link(os.path.join(src, "obj2"), os.path.join(src, "d", "hardlink"))
        with open(os.path.join(src, "d", "inline"), "wb") as f:
            f.write(b"inline data\n")
        open(os.path.join(src, "d", "empty"), "wb").close()
        os.symlink("../obj1", os.path.join(src, "d", "sym"))
        os.mkfifo(os.path.join(src, "d", "fifo"))
        os.setxattr(os.path.join(src, "obj0"), "user.a", b"value")
        os.setxattr(os.path.join(src, "d"), "user.dir", b"x" * 300)
        os.setxattr(os.path.join(src, "d", "inline"), "security.selinux", b"system_u:object_r:etc_t:s0")
        for i in range(40):
            with open(os.path.join(src, "d", "e", "f%02d" % i), "wb") as f:
                f.write(b"%d" % i)
        img = os.path.join(tmp, "tree.cfs")
        subprocess.run([mkcfs, "--digest-store=" + store, src, img], check=True)
        images = {"tree": open(img, "rb").read()}

        dump = subprocess.run([info, "dump", img], check=True, capture_output=True).stdout.decode()
        lines = dump.splitlines()

        def variant(name, edit):
            new = [edit(l) for l in lines]
            path = os.path.join(tmp, name + ".dump")
            with open(path, "w") as f:
                f.write("\n".join(l for l in new if l is not None) + "\n")
            dst = os.path.join(tmp, name + ".cfs")
            subprocess.run([mkcfs, "--from-file", path, dst], check=True)
            images[name] = open(dst, "rb").read()

        def fields(l):
            return l.split(" ")

        def edit_obj(k, fn):
            def edit(l):
                f = fields(l)
                if f[0] == "/obj%d" % k:
                    f = fn(f)
                return " ".join(f)
            return edit

        # PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST XATTR...
        variant("size-mismatch", edit_obj(4, lambda f: f[:1] + [str(SIZES[4] - 1)] + f[2:]))
        variant("digest-mismatch", edit_obj(3, lambda f: f[:10] + [f[10][:-1] + ("0" if f[10][-1] != "0" else "1")] + f[11:]))
        variant("missing", edit_obj(5, lambda f: f[:8] + ["00/" + "0" * 62] + f[9:10] + ["00" + "0" * 62] + f[11:]))
        variant("no-digest", edit_obj(6, lambda f: f[:10] + ["-"] + f[11:]))
        variant("escape", edit_obj(1, lambda f: f[:8] + ["../../etc/passwd"] + f[9:10] + ["-"] + f[11:]))
        for name, data in images.items():
            with open(os.path.join(out, name + ".cfs"), "wb") as f:
                f.write(data)
            with open(os.path.join(out, name + "-opts.cfs"), "wb") as f:
                f.write(data[:-1] + bytes([1 | 4 | 8 | 16]))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
