# SPDX-License-Identifier: LGPL-2.1-or-later
"""composefs-fuse against the kernel's own composefs mount (erofs + overlayfs
with the object store as a data-only layer): same tree, same metadata, same
xattrs, same content; verified reads; startup errors; readiness; shutdown."""
import contextlib
import errno
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import types
import threading
import time

import pytest

from conftest import (CONFORMANCE, SUSPICIOUS, assert_same_tree, flip_byte, fuse_mount,
                      kernel_mount, list_xattrs, needs_root, read_stats, run, snapshot, tool,
                      wait_for_mount)
from erofs_layout import inode_offset, sb_get, sb_set

pytestmark = [needs_root,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")]


# ---------------------------------------------------------------- helpers

def _reap(proc, mnt, sock):
    """Cleanup after a test that started the daemon itself: whatever failed,
    no daemon, no mount and no socket are left behind."""
    if proc.poll() is None:
        proc.kill()
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", mnt])
    sock.close()


def _w(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make_tree(root, many=10000, seed=1):
    """A tree with every file type, hard links, odd names, deep nesting, a big
    directory, big/sparse/inline files and xattrs of every namespace."""
    rnd = random.Random(seed)
    R = os.fsencode(root)

    def p(*parts):
        return os.path.join(R, *[os.fsencode(x) if isinstance(x, str) else x for x in parts])

    def rand(n):
        return rnd.randbytes(n)

    os.makedirs(p("files"))
    _w(p("files", "empty"), b"")
    _w(p("files", "one"), b"x")
    _w(p("files", "inline64"), b"i" * 64)
    _w(p("files", "small65"), b"s" * 65)
    _w(p("files", "block"), rand(4096))
    _w(p("files", "block1"), rand(4097))
    _w(p("files", "mib1"), rand((1 << 20) + 1))
    _w(p("files", "big"), rand(6 << 20))
    with open(p("files", "sparse"), "wb") as f:
        f.truncate(64 << 20)
        f.write(rand(5000))
        f.seek(32 << 20)
        f.write(rand(4096))
        f.seek((64 << 20) - 4)
        f.write(b"tail")
    # hard links: external, inline and empty files
    os.link(p("files", "block"), p("files", "block.link"))
    os.link(p("files", "block"), p("block.link2"))
    os.link(p("files", "one"), p("files", "one.link"))
    os.link(p("files", "empty"), p("files", "empty.link"))
    # symlinks
    os.makedirs(p("links"))
    os.symlink("../files/one", p("links", "rel"))
    os.symlink("/etc/passwd", p("links", "abs"))
    os.symlink("nowhere/at/all", p("links", "dangling"))
    os.symlink("a/" * 1000 + "end", p("links", "long"))
    # special files
    os.makedirs(p("special"))
    os.mkfifo(p("special", "fifo"))
    os.mknod(p("special", "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(p("special", "loop"), stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(p("special", "bigdev"), stat.S_IFCHR | 0o600, os.makedev(259, 65537))
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    try:
        os.chdir(p("special"))
        s.bind("sock")
    finally:
        os.chdir(cwd)
        s.close()
    # an overlay whiteout and a name that only looks like one
    os.makedirs(p("wh"))
    os.mknod(p("wh", "gone"), stat.S_IFCHR | 0o644, os.makedev(0, 0))
    _w(p("wh", "00"), b"not a whiteout")
    _w(p("wh", "kept"), b"kept")
    # odd names
    os.makedirs(p("names"))
    for n in ["with space", "new\nline", "tab\there", "back\\slash", "-dash", ".hidden",
              "ünïcødé", "n" * 255, b"latin1-\xe9\xff\xfe", "quote\"'", "=eq=", "%s%n"]:
        _w(p("names", n), n.encode() if isinstance(n, str) else n)
    # deep nesting
    deep = p("deep")
    for i in range(40):
        deep = os.path.join(deep, b"d%d" % i)
    os.makedirs(deep)
    _w(os.path.join(deep, b"leaf"), b"deep leaf\n")
    # a big directory
    os.makedirs(p("many"))
    for i in range(many):
        _w(p("many", "f%05d" % i), b"%d\n" % i if i % 3 else b"")
    # xattrs of every namespace
    os.makedirs(p("x"))
    xf = p("x", "file")
    _w(xf, rand(10000))
    os.setxattr(xf, "user.a", b"value")
    os.setxattr(xf, "user.bin", bytes(range(256)))
    os.setxattr(xf, "user.empty", b"")
    os.setxattr(xf, "user.large", rand(3000))
    os.setxattr(xf, "trusted.t", b"trusted value")
    os.setxattr(xf, "security.s", b"security value")
    os.setxattr(xf, "trusted.overlay.custom", b"escaped")   # stored escaped
    os.setxattr(xf, "user.overlay.u", b"user overlay")
    os.setxattr(p("x"), "user.dir", b"on a dir")
    os.setxattr(p("x"), "trusted.overlay.opaque", b"y")     # an escaped opaque
    os.symlink("file", p("x", "sym"))
    os.setxattr(p("x", "sym"), "trusted.sym", b"on a symlink", follow_symlinks=False)
    for i in range(20):
        f = p("x", "shared%d" % i)
        _w(f, b"%d" % i)
        os.setxattr(f, "user.shared", b"the same value everywhere")
        os.setxattr(f, "user.own", b"%d" % i)
    if shutil.which("setfacl"):
        _w(p("x", "acl"), b"acl file")
        run(["setfacl", "-m", "u:1234:r-x,g:5678:rw-", os.fsdecode(p("x", "acl"))])
        os.makedirs(p("x", "acldir"))
        run(["setfacl", "-d", "-m", "u:4321:rwx", os.fsdecode(p("x", "acldir"))])
    # modes, owners, times
    os.makedirs(p("modes"))
    for name, mode in [("suid", 0o4755), ("sgid", 0o2711), ("none", 0o000), ("private", 0o600),
                       ("exec", 0o755)]:
        _w(p("modes", name), name.encode())
        os.chmod(p("modes", name), mode)
    os.makedirs(p("modes", "sticky"))
    os.chmod(p("modes", "sticky"), 0o1777)
    _w(p("modes", "owned"), b"owned")
    os.chown(p("modes", "owned"), 1234, 5678)
    os.lchown(p("links", "rel"), 4321, 8765)
    os.utime(p("modes", "owned"), ns=(0, 1234567890123456789))
    os.utime(p("modes", "exec"), ns=(0, 1))
    os.utime(p("links", "abs"), ns=(0, 987654321 * 10**9 + 42), follow_symlinks=False)
    os.utime(p("modes"), ns=(0, 1500000000 * 10**9 + 7))


def build_image(src, out, extra=()):
    """Build IMAGE and OBJECTS from SRC with the project's mkcomposefs."""
    img = os.path.join(out, "image.cfs")
    objs = os.path.join(out, "objects")
    os.makedirs(objs, exist_ok=True)
    run([tool("mkcomposefs"), f"--digest-store={objs}", *extra, src, img])
    return img, objs


def object_of(img, path):
    """The object path (xx/yyyy...) of PATH in IMG, read from the kernel mount
    of the image's metadata layer."""
    top = tempfile.mkdtemp(prefix="cfs-meta-")
    try:
        run(["mount", "-t", "erofs", "-o", "loop,ro", img, top])
        try:
            v = os.getxattr(os.path.join(top, path.lstrip("/")), "trusted.overlay.redirect")
        finally:
            subprocess.run(["umount", top])
    finally:
        os.rmdir(top)
    return v.decode().lstrip("/")


def more_stat(root):
    """The lstat fields conftest.snapshot() leaves out: directory sizes,
    atime, ctime, st_blocks, st_blksize.

    Take it on a fresh kernel mount, before anything is opened: overlayfs
    looks up a data-only layer's object only at open, and until then gives
    st_blocks as the size rounded up to st_blksize (as the daemon always
    does); after an open it is the object's own count, which depends on the
    store's filesystem (holes kept by reflink copies, compression)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for p in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_atime_ns, st.st_ctime_ns,
                                             st.st_blocks, st.st_blksize)
    return out


def listing(root):
    """Like conftest.snapshot(content=False), but a name that cannot be
    looked up (overlayfs: metacopy without data) is recorded with its errno."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames) + ([""] if dirpath == root else []):
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            try:
                st = os.lstat(p)
            except OSError as e:
                out[rel] = {"error": e.errno}
                continue
            e = {"mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid,
                 "gid": st.st_gid, "size": st.st_size, "mtime": st.st_mtime_ns,
                 "rdev": st.st_rdev, "blocks": st.st_blocks if not stat.S_ISREG(st.st_mode) else None,
                 "xattrs": list_xattrs(p)}
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            out[rel] = e
    return out


@pytest.fixture(scope="module")
def gen_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("gen")
    src = os.path.join(base, "src")
    make_tree(src)
    img, objs = build_image(src, str(base))
    # Keep the holes of files/sparse in its object, whatever the store's
    # filesystem did with them: the kernel's st_blocks for it then depends on
    # whether it was opened yet (see more_stat).
    sparse = [os.path.join(d, n) for d, _, ns in os.walk(objs) for n in ns
              if os.path.getsize(os.path.join(d, n)) == 64 << 20]
    assert len(sparse) == 1
    for off, end in ((8192, 32 << 20), ((32 << 20) + 4096, (64 << 20) - 4096)):
        run(["fallocate", "--punch-hole", "-o", str(off), "-l", str(end - off), sparse[0]])
    assert os.stat(sparse[0]).st_blocks < 1024
    return src, img, objs


# ---------------------------------------------------------------- differential

@pytest.mark.parametrize("options", [[], ["passthrough=off", "io=pread", "threads=2"], ["verity=off"],
                                     ["passthrough=always"]],
                         ids=["default", "pread", "verity-off", "passthrough-always"])
def test_generated_tree_matches_kernel(gen_tree, options):
    src, img, objs = gen_tree
    with kernel_mount(img, objs) as kmnt:
        kmore = more_stat(kmnt)
        ksnap = snapshot(kmnt)
    with fuse_mount(img, objs, options=options) as (fmnt, proc):
        fsnap = snapshot(fmnt)
        fmore = more_stat(fmnt)
        # the 256 whiteouts in the root are invisible, also to lookups
        for n in ("00", "7f", "ff"):
            assert not os.path.lexists(os.path.join(fmnt, n))
        assert os.path.exists(os.path.join(fmnt, "wh", "00"))
    assert len(fsnap) > 10000
    assert_same_tree(ksnap, fsnap)
    assert kmore == fmore
    # and the tree is the source tree (spot checks on content and names)
    assert fsnap["files/mib1"]["sha256"] == ksnap["files/mib1"]["sha256"]
    assert os.fsdecode(b"names/latin1-\xe9\xff\xfe") in fsnap
    # a whiteout in the source is stored escaped: the kernel shows an empty
    # file carrying the (unescaped) overlay xattrs, for a nested overlay
    gone = fsnap["wh/gone"]
    assert stat.S_ISREG(gone["mode"]) and gone["size"] == 0
    assert "trusted.overlay.whiteout" in gone["xattrs"]
    assert fsnap["x/file"]["xattrs"]["trusted.overlay.custom"] == b"escaped"


def test_conformance_dumps_match_kernel(tmp_path):
    """Images built from the conformance dumps: metadata as the kernel shows
    it (their objects are not available, so no content)."""
    dumps = sorted(glob.glob(os.path.join(CONFORMANCE, "dumps", "*.dump")))
    assert dumps
    compared = 0
    for dump in dumps:
        name = os.path.basename(dump)
        img = str(tmp_path / (name + ".img"))
        objs = tmp_path / "empty-objects"
        objs.mkdir(exist_ok=True)
        extra = []
        vf = dump + ".version"
        if os.path.exists(vf):
            v = open(vf).read().strip()
            extra = [f"--min-version={v}", f"--max-version={v}"]
        run([tool("mkcomposefs"), "--from-file", *extra, dump, img])
        with kernel_mount(img, str(objs)) as kmnt:
            ksnap = listing(kmnt)
        with fuse_mount(img, str(objs)) as (fmnt, proc):
            fsnap = listing(fmnt)
        assert_same_tree(ksnap, fsnap)
        compared += 1
    assert compared == len(dumps)


def test_usr_share_doc_matches_kernel(tmp_path):
    if not os.path.isdir("/usr/share/doc"):
        pytest.skip("no /usr/share/doc")
    src = str(tmp_path / "doc")
    run(["cp", "-a", "/usr/share/doc", src])
    img, objs = build_image(src, str(tmp_path))
    with kernel_mount(img, objs) as kmnt:
        kmore = more_stat(kmnt)
        ksnap = snapshot(kmnt)
    with fuse_mount(img, objs) as (fmnt, proc):
        fsnap = snapshot(fmnt)
        fmore = more_stat(fmnt)
    assert len(fsnap) > 1000
    assert_same_tree(ksnap, fsnap)
    assert kmore == fmore
    # and equal to the source itself, the whole way down
    ssnap = snapshot(src)
    for k in ssnap:
        if k in (".", "<hardlinks>"):
            continue
        for field in ("mode", "uid", "gid", "size", "mtime", "sha256", "target"):
            assert ssnap[k].get(field) == fsnap[k].get(field), (k, field)


# ---------------------------------------------------------------- data path

_stats = read_stats


def test_passthrough_used_as_root(gen_tree, tmp_path):
    src, img, objs = gen_tree
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=["verity=off", f"stats_file={stats}"]) as (fmnt, proc):
        for name in ("files/mib1", "files/big", "files/sparse", "files/block"):
            with open(os.path.join(fmnt, name), "rb") as f:
                assert f.read() == open(os.path.join(src, name), "rb").read()
        # mmap works on a passthrough file
        import mmap
        with open(os.path.join(fmnt, "files/big"), "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            want = open(os.path.join(src, "files/big"), "rb").read()
            assert m[:] == want
            assert m[12345:23456] == want[12345:23456]
            m.close()
        # SEEK_DATA/SEEK_HOLE on the sparse file
        with open(os.path.join(fmnt, "files/sparse"), "rb") as f:
            fd = f.fileno()
            assert os.lseek(fd, 0, os.SEEK_DATA) == 0
            hole = os.lseek(fd, 0, os.SEEK_HOLE)
            # as sparse as the backing object is
            obj = os.path.join(objs, object_of(img, "files/sparse"))
            ofd = os.open(obj, os.O_RDONLY)
            try:
                assert hole == os.lseek(ofd, 0, os.SEEK_HOLE)
                assert os.lseek(fd, 32 << 20, os.SEEK_DATA) == os.lseek(ofd, 32 << 20, os.SEEK_DATA)
            finally:
                os.close(ofd)
    s = _stats(stats)
    assert s["opens_passthrough"] >= 4
    assert s["opens_daemon"] == 0
    assert s["verity"] == "off" and s["verification"] == "off"
    assert s["objects_unverified"] >= 4 and s["objects_userspace"] == 0
    # no read of those files reached the daemon
    assert s["reads"] == 0, s
    assert "kernel passthrough" in proc.stderr_text


def test_passthrough_always_verifies_first(gen_tree, tmp_path):
    """passthrough=always checks the whole object at open; a corrupt object
    is refused instead of being handed to the kernel."""
    src, img, objs = gen_tree
    objs2 = str(tmp_path / "objs")
    shutil.copytree(objs, objs2)
    obj = os.path.join(objs2, object_of(img, "files/mib1"))
    with open(obj, "r+b") as f:
        f.seek(700000)
        b = f.read(1)
        f.seek(700000)
        f.write(bytes([b[0] ^ 0x55]))
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs2, options=["passthrough=always", "tree_cache=none",
                                         f"stats_file={stats}"]) as (fmnt, proc):
        with pytest.raises(OSError) as e:
            open(os.path.join(fmnt, "files/mib1"), "rb").read()
        assert e.value.errno == 5
        with open(os.path.join(fmnt, "files/big"), "rb") as f:
            assert f.read() == open(os.path.join(src, "files/big"), "rb").read()
    s = _stats(stats)
    assert s["opens_passthrough"] >= 1
    assert s["reads"] == 0


def _flip(path, off):
    flip_byte(path, off, 0x55)


def test_passthrough_always_checks_a_reused_tree(gen_tree, tmp_path):
    """With passthrough=always, an object whose Merkle tree was not just built
    from its data (reused from memory or from the tree cache) is read and
    checked in full at open before the kernel gets the backing file."""
    src, img, objs = gen_tree
    objs2 = str(tmp_path / "objs")
    shutil.copytree(objs, objs2, ignore=shutil.ignore_patterns(".cfs-trees"))  # trees: cache only
    obj = os.path.join(objs2, object_of(img, "files/mib1"))
    want = open(os.path.join(src, "files/mib1"), "rb").read()
    stats = str(tmp_path / "stats")
    opts = ["passthrough=always", f"tree_cache={tmp_path / 'trees'}", f"stats_file={stats}"]
    with fuse_mount(img, objs2, options=opts) as (fmnt, proc):
        with open(os.path.join(fmnt, "files/mib1"), "rb") as f:   # tree built from the data
            assert f.read() == want
        _flip(obj, 300000)     # after the last release: the next open reuses the tree
        with pytest.raises(OSError) as e:
            open(os.path.join(fmnt, "files/mib1"), "rb")
        assert e.value.errno == 5
    s = _stats(stats)
    assert s["opens_passthrough"] == 1 and s["reads"] == 0, s
    # the tree was kept (with the object, open and idle): checked again, not rebuilt
    assert s["cas_trees_built"] == 1 and s["cas_blocks_failed"] >= 1, s
    assert s["cas_trees_written"] >= 1, s
    _flip(obj, 300000)         # repaired: the saved tree is used and the data passes
    with fuse_mount(img, objs2, options=opts) as (fmnt, proc):
        with open(os.path.join(fmnt, "files/mib1"), "rb") as f:
            assert f.read() == want
    s = _stats(stats)
    assert s["cas_trees_from_disk"] == 1 and s["cas_trees_built"] == 0, s
    assert s["opens_passthrough"] == 1 and s["cas_blocks_failed"] == 0, s


def test_daemon_served_reads_keep_cache(gen_tree, tmp_path):
    src, img, objs = gen_tree
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=["passthrough=off", f"stats_file={stats}"]) as (fmnt, proc):
        want = open(os.path.join(src, "files/big"), "rb").read()
        for _ in range(3):
            with open(os.path.join(fmnt, "files/big"), "rb") as f:
                assert f.read() == want
    s = _stats(stats)
    # daemon-served reads need no OPEN: the first is answered ENOSYS and
    # the kernel sends none after it
    assert s["open_mode"] == "no-open" and s["opens"] == 1, s
    assert s["opens_daemon"] == 0 and s["opens_passthrough"] == 0
    assert "open mode: no-open" in proc.stderr_text
    # which settings, io backend and verification method were in use, and
    # the object store's own counters
    assert s["verity"] == "on" and s["passthrough"] == "off"
    assert s["io"] in ("io_uring", "pread")
    assert f"io: {s['io']}" in proc.stderr_text and f"io={s['io']}" in proc.stderr_text
    assert s["verification"] == "userspace"
    assert s["objects_userspace"] >= 1 and s["objects_kernel"] == 0
    assert s["cas_objects_opened"] >= 1
    assert s["cas_trees_built"] + s["cas_trees_from_disk"] + s["cas_trees_from_store"] == 1
    assert s["cas_blocks_failed"] == 0
    # the second and third opens are served from the kernel's page cache
    assert s["read_bytes"] <= len(want) + (1 << 20), s
    assert "daemon-served reads, verification: userspace" in proc.stderr_text


def test_tampered_object_gives_eio_for_the_bad_block(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(5).randbytes(4 << 20)
    _w(src / "victim", data)
    _w(src / "other", data[::-1])
    img, objs = build_image(str(src), str(tmp_path))
    obj = os.path.join(objs, object_of(img, "victim"))
    bad = 2 * (1 << 20) + 100       # inside block 512
    with fuse_mount(img, objs, options=["tree_cache=none", "passthrough=off"]) as (fmnt, proc):
        fd = os.open(os.path.join(fmnt, "victim"), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            # the object changes after the file was opened (tree built, root checked)
            with open(obj, "r+b") as f:
                f.seek(bad)
                f.write(bytes([data[bad] ^ 1]))
            assert os.pread(fd, 4096, 0) == data[:4096]
            assert os.pread(fd, 4096, 3 << 20) == data[3 << 20:(3 << 20) + 4096]
            with pytest.raises(OSError) as e:
                os.pread(fd, 4096, bad & ~4095)
            assert e.value.errno == 5
            # intact blocks right next to it still read
            assert os.pread(fd, 4096, (bad & ~4095) + 4 * 4096) == \
                data[(bad & ~4095) + 4 * 4096:(bad & ~4095) + 5 * 4096]
        finally:
            os.close(fd)
        with open(os.path.join(fmnt, "other"), "rb") as f:
            assert f.read() == data[::-1]
    lines = [l for l in proc.stderr_text.splitlines() if "victim" in l]
    assert len(lines) == 1, proc.stderr_text
    assert object_of(img, "victim") in lines[0]


def test_missing_object_gives_eio_and_the_rest_reads(gen_tree, tmp_path):
    src, img, objs = gen_tree
    objs2 = str(tmp_path / "objs")
    shutil.copytree(objs, objs2)
    gone = object_of(img, "files/mib1")
    os.unlink(os.path.join(objs2, gone))
    with fuse_mount(img, objs2) as (fmnt, proc):
        for _ in range(3):
            with pytest.raises(OSError) as e:
                open(os.path.join(fmnt, "files/mib1"), "rb").read()
            assert e.value.errno == 5
        assert os.stat(os.path.join(fmnt, "files/mib1")).st_size == (1 << 20) + 1
        with open(os.path.join(fmnt, "files/big"), "rb") as f:
            assert f.read() == open(os.path.join(src, "files/big"), "rb").read()
        assert len(os.listdir(os.path.join(fmnt, "many"))) == 10000
    lines = [l for l in proc.stderr_text.splitlines() if gone in l]
    assert len(lines) == 1, proc.stderr_text
    assert "/files/mib1" in lines[0]


def _image_from_dump(tmp_path, entries):
    """An image of a root directory holding the dump ENTRIES (lines)."""
    dump = tmp_path / "d.dump"
    dump.write_text("".join(l + "\n" for l in ["/ 4096 40755 2 0 0 0 0.0 - - -", *entries]))
    img = str(tmp_path / "img")
    run([tool("mkcomposefs"), "--from-file", str(dump), img])
    return img


@pytest.mark.parametrize("require,relaxed", [("verity=require", []), ("verity", ["tryverity"])],
                         ids=["ours", "upstream-names"])
def test_verity_require_refuses_files_without_digest(tmp_path, require, relaxed):
    """verity=require (mount.composefs: verity) refuses a file without a
    digest; the default (mount.composefs: tryverity) serves it."""
    content = b"no digest for me\n" * 10
    objs = tmp_path / "objs"
    (objs / "ab").mkdir(parents=True)
    rel = "ab/" + "c" * 62
    _w(objs / rel, content)
    img = _image_from_dump(tmp_path, [f"/nodigest {len(content)} 100644 1 0 0 0 0.0 {rel} - -",
                                      "/inline 3 100644 1 0 0 0 0.0 - abc -"])
    with fuse_mount(img, str(objs), options=relaxed) as (fmnt, proc):
        assert open(os.path.join(fmnt, "nodigest"), "rb").read() == content
    with fuse_mount(img, str(objs), options=[require]) as (fmnt, proc):
        with pytest.raises(OSError) as e:
            open(os.path.join(fmnt, "nodigest"), "rb").read()
        assert e.value.errno == 5
        assert open(os.path.join(fmnt, "inline"), "rb").read() == b"abc"
    lines = [l for l in proc.stderr_text.splitlines() if "verity=require" in l and "/nodigest" in l]
    assert len(lines) == 1, proc.stderr_text


@pytest.mark.parametrize("opt", ["upperdir=/tmp/u", "workdir=/tmp/w", "idmap=/proc/1/ns/user"])
def test_overlay_only_upstream_options_refused_with_reason(gen_tree, tmp_path, opt):
    src, img, objs = gen_tree
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    p = run([tool("composefs-fuse"), "-f", "-o", f"basedir={objs},{opt}", img, mnt], check=False,
            timeout=30)
    assert p.returncode != 0 and not os.path.ismount(mnt)
    assert f"{opt}: a writable layer or an ID mapping is an overlayfs feature" in p.stderr.decode(), p.stderr


def test_metacopy_with_digest_but_no_redirect_as_kernel(tmp_path):
    """A metacopy file with a digest but no redirect: the object is in the
    store under its digest, but the kernel mount cannot look the file up
    (EIO; overlayfs finds data-only layers through redirects only) and still
    lists it.  composefs-fuse shows the same and never opens the object."""
    content = b"reachable by digest only\n" * 3
    objs = tmp_path / "objs"
    data = tmp_path / "content"
    _w(data, content)
    digest = run(["fsverity", "digest", "--compact", str(data)]).stdout.decode().split()[0]
    rel = f"{digest[:2]}/{digest[2:]}"
    (objs / digest[:2]).mkdir(parents=True)
    shutil.copy(data, objs / rel)
    img = _image_from_dump(tmp_path, [f"/nored {len(content)} 100644 1 0 0 0 0.0 - - {digest}",
                                      f"/withred {len(content)} 100644 1 0 0 0 0.0 {rel} - {digest}"])
    with kernel_mount(img, str(objs)) as kmnt:
        ksnap = listing(kmnt)
        klist = sorted(os.listdir(kmnt))
    stats = str(tmp_path / "stats")
    with fuse_mount(img, str(objs), options=[f"stats_file={stats}"]) as (fmnt, proc):
        fsnap = listing(fmnt)
        assert sorted(os.listdir(fmnt)) == klist == ["nored", "withred"]
        for how in (os.lstat, lambda p: open(p, "rb")):
            with pytest.raises(OSError) as e:
                how(os.path.join(fmnt, "nored"))
            assert e.value.errno == 5
        # readdirplus gives the name without attributes
        kinds = {e.name: e for e in os.scandir(fmnt)}
        with pytest.raises(OSError) as e:
            kinds["nored"].stat(follow_symlinks=False)
        assert e.value.errno == 5
        assert open(os.path.join(fmnt, "withred"), "rb").read() == content
    assert ksnap["nored"] == {"error": 5}
    assert_same_tree(ksnap, fsnap)
    s = _stats(stats)
    assert s["objects_userspace"] == 1 and s["open_errors"] == 0, s
    lines = [l for l in proc.stderr_text.splitlines() if "/nored" in l]
    assert len(lines) == 1 and "redirect" in lines[0], proc.stderr_text


def test_default_tree_cache_unusable_falls_back(gen_tree, tmp_path):
    """An unusable default tree cache ($HOME not writable) only costs
    persistence, with one warning; a usable one ($XDG_CACHE_HOME, else
    ~/.cache) receives the trees."""
    src, img, objs = gen_tree
    objs2 = tmp_path / "objs"          # a store without stored trees
    shutil.copytree(objs, objs2, ignore=shutil.ignore_patterns(".cfs-trees"))
    objs = str(objs2)
    blocker = tmp_path / "not-a-dir"
    _w(blocker, b"")
    want = open(os.path.join(src, "files/mib1"), "rb").read()
    stats = str(tmp_path / "stats")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(blocker / "home")}
    with fuse_mount(img, objs, options=["passthrough=off", f"stats_file={stats}"],
                    env=env) as (fmnt, proc):
        with open(os.path.join(fmnt, "files/mib1"), "rb") as f:
            assert f.read() == want
    s = _stats(stats)
    assert s["cas_trees_built"] == 1 and s["cas_trees_written"] == 0, s
    warn = [l for l in proc.stderr_text.splitlines() if "tree cache" in l and "unusable" in l]
    assert len(warn) == 1, proc.stderr_text
    assert str(blocker / "home") in warn[0]
    assert "tree cache off" in proc.stderr_text

    cases = [({"HOME": str(tmp_path / "home")}, tmp_path / "home" / ".cache"),
             ({"HOME": str(blocker), "XDG_CACHE_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg")]
    for env_extra, where in cases:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env_extra}
        with fuse_mount(img, objs, options=["passthrough=off", f"stats_file={stats}"],
                        env=env) as (fmnt, proc):
            with open(os.path.join(fmnt, "files/mib1"), "rb") as f:
                assert f.read() == want
        s = _stats(stats)
        assert s["cas_trees_written"] == 1, s
        assert "unusable" not in proc.stderr_text
        assert len(list((where / "composefs-fuse").rglob("*"))) >= 1


def test_explicit_tree_cache_unusable_is_an_error(gen_tree, tmp_path):
    src, img, objs = gen_tree
    objs2 = tmp_path / "objs"          # a store without stored trees
    shutil.copytree(objs, objs2, ignore=shutil.ignore_patterns(".cfs-trees"))
    objs = str(objs2)
    blocker = tmp_path / "not-a-dir"
    _w(blocker, b"")
    bad = str(blocker / "trees")
    _fails_before_mount(lambda m: ["-o", f"basedir={objs},tree_cache={bad}", img, m],
                        f"tree_cache '{bad}'", tmp_path)
    inside = os.path.join(objs, "trees")
    _fails_before_mount(lambda m: ["-o", f"basedir={objs},tree_cache={inside}", img, m],
                        "inside an object store", tmp_path)
    assert not os.path.exists(inside)
    # another refusal of the path is not called "inside an object store"
    dots = str(tmp_path / "new" / ".." / "trees")
    err = _fails_before_mount(lambda m: ["-o", f"basedir={objs},tree_cache={dots}", img, m],
                              "'.' or '..'", tmp_path)
    assert "inside an object store" not in err, err


def test_read_only(gen_tree):
    src, img, objs = gen_tree
    with fuse_mount(img, objs) as (fmnt, proc):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(OSError) as e:
                os.open(os.path.join(fmnt, "files/one"), flags)
            assert e.value.errno == 30
        for fn in (lambda: os.mkdir(os.path.join(fmnt, "new")),
                   lambda: os.unlink(os.path.join(fmnt, "files/one")),
                   lambda: os.setxattr(os.path.join(fmnt, "files/one"), "user.x", b"1"),
                   lambda: os.chmod(os.path.join(fmnt, "files/one"), 0o777),
                   lambda: open(os.path.join(fmnt, "newfile"), "wb")):
            with pytest.raises(OSError) as e:
                fn()
            assert e.value.errno == 30
        st = os.statvfs(fmnt)
        assert st.f_flag & os.ST_RDONLY
        assert st.f_namemax == 255


# ---------------------------------------------------------------- startup

def _fails_before_mount(args, what, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        p = run([tool("composefs-fuse"), "-f", *args(str(mnt))], check=False, timeout=30)
    finally:
        # A daemon that wrongly mounted and was killed must not leave its mount behind.
        mounted = os.path.ismount(mnt)
        if mounted:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    assert not mounted
    assert p.returncode != 0
    err = p.stderr.decode()
    assert what in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _garbage_image(c):
    path = c.tmp / "garbage"
    _w(path, b"\0" * 8192)
    return str(path)


def _future_image(c):
    """The image with an EROFS incompatible feature bit nobody knows."""
    raw = bytearray(open(c.img, "rb").read())
    sb_set(raw, "feature_incompat", sb_get(raw, "feature_incompat") | 0x100)
    path = c.tmp / "future.cfs"
    _w(path, bytes(raw))
    return str(path)


# (id, arguments given the case's image, store, tmp dir and mountpoint,
# what the one line of error must say)
STARTUP_ERRORS = [
    ("garbage-image", lambda c, m: [_garbage_image(c), m], "garbage"),
    ("unknown-incompat-feature", lambda c, m: [_future_image(c), m],
     "incompatible features 0x00000100"),
    ("absent-image", lambda c, m: [str(c.tmp / "absent"), m], "absent"),
    ("wrong-digest", lambda c, m: ["-o", "digest=" + "0" * 64, c.img, m], "does not match"),
    ("malformed-digest", lambda c, m: ["-o", "digest=xyz", c.img, m], "digest=xyz"),
    ("missing-basedir", lambda c, m: ["-o", f"basedir={c.objs}:/nonexistent-store", c.img, m],
     "/nonexistent-store"),
    ("missing-mountpoint", lambda c, m: [c.img, str(c.tmp / "no-such-mnt")], "no-such-mnt"),
    ("mountpoint-a-file", lambda c, m: [c.img, c.img], "not a directory"),
    ("bad-verity", lambda c, m: ["-o", "verity=maybe", c.img, m], "verity=maybe"),
    ("unknown-option", lambda c, m: ["-o", "bogus_option", c.img, m], "bogus_option"),
    ("negative-size", lambda c, m: ["-o", "tree_cache_size=-1", c.img, m], "tree_cache_size=-1"),
    ("bad-size-suffix", lambda c, m: ["-o", "tree_cache_size=16X", c.img, m], "not a size"),
    # 0 meant the 64 MiB default without a word
    ("zero-size", lambda c, m: ["-o", "tree_cache_size=0", c.img, m],
     "tree_cache_size=0: must be more than 0"),
    ("bad-io", lambda c, m: ["-o", "io=fast", c.img, m], "expected auto, uring or pread"),
    ("negative-threads", lambda c, m: ["-o", "threads=-1", c.img, m], "threads=-1"),
    ("zero-threads", lambda c, m: ["-o", "threads=0", c.img, m], "threads=0"),
]


@pytest.mark.parametrize("args, what", [pytest.param(a, w, id=i) for i, a, w in STARTUP_ERRORS])
def test_startup_errors(gen_tree, tmp_path, args, what):
    """A start that cannot serve stops before mounting, with one line that
    names the reason."""
    src, img, objs = gen_tree
    c = types.SimpleNamespace(img=img, objs=objs, tmp=tmp_path)
    _fails_before_mount(lambda m: args(c, m), what, tmp_path)


def test_right_digest_mounts(gen_tree):
    src, img, objs = gen_tree
    digest = run(["fsverity", "digest", "--compact", img]).stdout.decode().split()[0]
    with fuse_mount(img, objs, options=[f"digest={digest}"]) as (fmnt, proc):
        assert open(os.path.join(fmnt, "files/one"), "rb").read() == b"x"


def test_image_changed_after_mount_is_not_seen(gen_tree, tmp_path):
    src, img, objs = gen_tree
    img2 = str(tmp_path / "img")
    shutil.copy(img, img2)
    with fuse_mount(img2, objs) as (fmnt, proc):
        before = sorted(os.listdir(os.path.join(fmnt, "files")))
        with open(img2, "r+b") as f:     # wreck it
            f.write(b"\0" * 65536)
        assert sorted(os.listdir(os.path.join(fmnt, "files"))) == before
        assert open(os.path.join(fmnt, "files/one"), "rb").read() == b"x"


def test_upstream_source_form(gen_tree):
    src, img, objs = gen_tree
    mnt = tempfile.mkdtemp(prefix="cfs-src-")
    proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", f"source={img},basedir={objs}",
                             mnt], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_mount(proc, mnt)
        assert open(os.path.join(mnt, "files/one"), "rb").read() == b"x"
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        assert proc.wait(timeout=30) == 0
        os.rmdir(mnt)


@pytest.mark.parametrize("how", ["mount.fuse3", "mount"])
def test_mount_helper_form(gen_tree, how):
    """mount -t fuse.composefs-fuse IMAGE MNT -o basedir=DIR (the daemon is
    started as `composefs-fuse IMAGE MNT -o OPTS` and daemonizes)."""
    src, img, objs = gen_tree
    mnt = tempfile.mkdtemp(prefix="cfs-helper-")
    env = dict(os.environ, PATH=os.path.dirname(tool("composefs-fuse")) + ":" + os.environ["PATH"])
    link = None
    if how == "mount":
        # mount(8) runs helpers with a fixed PATH: make the daemon findable
        link = "/usr/local/sbin/composefs-fuse"
        if os.path.lexists(link) or shutil.which("composefs-fuse", path=os.defpath +
                                                   ":/usr/local/sbin:/usr/local/bin:/sbin:/bin"):
            pytest.skip("a composefs-fuse is already installed")
        os.symlink(tool("composefs-fuse"), link)
        cmd = ["mount", "-t", "fuse.composefs-fuse", img, mnt, "-o", f"basedir={objs}"]
    else:
        cmd = ["mount.fuse3", img, mnt, "-t", "composefs-fuse", "-o", f"basedir={objs}"]
    try:
        run(cmd, env=env, timeout=60)
        assert os.path.ismount(mnt)
        with open(os.path.join(mnt, "files/big"), "rb") as f:
            assert f.read() == open(os.path.join(src, "files/big"), "rb").read()
        mi = open("/proc/self/mountinfo").read()
        line = [l for l in mi.splitlines() if f" {mnt} " in l][0]
        assert "fuse.composefs-fuse" in line and " ro," in line + ","
    finally:
        if link:
            os.unlink(link)
        if os.path.ismount(mnt):
            run(["umount", mnt])
        os.rmdir(mnt)


# ---------------------------------------------------------------- lifecycle

def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    return path, sock


def test_notify_socket_ready_after_mount(gen_tree, tmp_path):
    src, img, objs = gen_tree
    sockpath, sock = notify_socket(tmp_path)
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    env = dict(os.environ, NOTIFY_SOCKET=sockpath)
    proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", f"basedir={objs}", img, mnt],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg.split("\n")
        assert f"MAINPID={proc.pid}" in msg
        assert os.path.ismount(mnt)
        assert sock.recv(4096).decode() == "STATUS=serving; 0 objects opened with verification; 0 files or objects with errors"
        assert open(os.path.join(mnt, "files/one"), "rb").read() == b"x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert sock.recv(4096).decode().startswith("STATUS=stopping; ")
        assert not os.path.ismount(mnt)
    finally:
        _reap(proc, mnt, sock)
    assert not SUSPICIOUS.search(proc.stderr.read())


def test_journal_priorities_and_status(gen_tree, tmp_path):
    """With stderr the journal's stream (JOURNAL_STREAM names its device
    and inode), every line carries its syslog priority, so that a corrupt
    object's error is at error priority (journalctl -p err); the service
    manager's STATUS= counts it.  A stderr that is not the stream named
    (a redirection, a pipe) gets plain lines."""
    src, img, objs = gen_tree
    bad = str(tmp_path / "objs")
    shutil.copytree(objs, bad)
    ref = os.path.join(bad, object_of(img, "files/block"))
    flip_byte(ref, 100)
    sockpath, sock = notify_socket(tmp_path)
    for journal in (True, False):
        mnt = str(tmp_path / "mnt")
        os.makedirs(mnt, exist_ok=True)
        errpath = str(tmp_path / f"stderr-{journal}")
        with open(errpath, "w") as err:
            st = os.fstat(err.fileno())
            env = dict(os.environ, NOTIFY_SOCKET=sockpath,
                       JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}" if journal else "1:1")
            proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", f"basedir={bad}", img, mnt],
                                    stderr=err, env=env)
        try:
            assert "READY=1" in sock.recv(4096).decode()
            assert "0 files or objects with errors" in sock.recv(4096).decode()
            with pytest.raises(OSError) as e:
                open(os.path.join(mnt, "files/block"), "rb").read()
            assert e.value.errno == errno.EIO
            status = sock.recv(4096).decode()
            assert status == "STATUS=serving; 1 objects opened with verification; 1 files or objects with errors (see the log)", status
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            _reap(proc, mnt, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        lines = open(errpath).read().splitlines()
        bad_lines = [l for l in lines if "do not match its fs-verity digest" in l]
        assert len(bad_lines) == 1, lines
        if journal:
            assert all(re.match(r"<[0-7]>composefs-fuse: ", l) for l in lines), lines
            assert bad_lines[0].startswith("<3>composefs-fuse: "), bad_lines
            assert any(l.startswith("<5>composefs-fuse: serving ") for l in lines), lines
        else:
            assert all(l.startswith("composefs-fuse: ") for l in lines), lines
        while True:  # the stop's messages
            try:
                sock.settimeout(0.5)
                sock.recv(4096)
            except OSError:
                break
        sock.settimeout(20)
    sock.close()


def _mounts_on(mnt):
    with open("/proc/self/mountinfo") as f:
        return [l.split(" - ")[1].split()[0] for l in f if l.split()[4] == mnt]


def test_restart_replaces_dead_mount(gen_tree, tmp_path):
    """A root daemon killed with SIGKILL leaves a dead mount (ENOTCONN);
    the next start on that mountpoint (systemd's Restart=) detaches it and
    mounts in its place: one working mount, not two stacked.  A dead mount
    of another filesystem is not touched."""
    src, img, objs = gen_tree
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    argv = [tool("composefs-fuse"), "-f", "-o", f"basedir={objs}", img, mnt]
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    wait_for_mount(first, mnt)
    first.kill()
    first.wait()
    with pytest.raises(OSError) as e:
        os.statvfs(mnt)  # a stat() may come from the attribute cache
    assert e.value.errno == errno.ENOTCONN
    with fuse_mount(img, objs, mnt=mnt) as (fmnt, proc):
        assert _mounts_on(mnt) == ["fuse.composefs-fuse"]
        assert open(os.path.join(fmnt, "files/one"), "rb").read() == b"x"
    assert "a dead composefs-fuse mount (its daemon died); replacing it" in proc.stderr_text
    assert _mounts_on(mnt) == []

    # Someone else's dead mount: refused, left in place.
    other = subprocess.Popen([tool("failfs"), "-f", "-o", f"src={objs},ro", mnt],
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert other.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        other.kill()
        other.wait()
        p = run(argv, check=False, timeout=30)
        assert p.returncode != 0
        assert "a dead FUSE mount not made by composefs-fuse" in p.stderr.decode(), p.stderr
        assert len(_mounts_on(mnt)) == 1 and _mounts_on(mnt)[0] != "fuse.composefs-fuse"
    finally:
        subprocess.run(["umount", "-l", mnt])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_clean_exit(gen_tree, tmp_path, sig):
    src, img, objs = gen_tree
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", f"basedir={objs}", img, mnt],
                            stderr=subprocess.PIPE, text=True)
    wait_for_mount(proc, mnt)
    os.listdir(mnt)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    assert not os.path.ismount(mnt)


def test_daemonizes_without_f(gen_tree, tmp_path):
    src, img, objs = gen_tree
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    p = run([tool("composefs-fuse"), "-o", f"basedir={objs}", img, mnt], timeout=30)
    assert p.returncode == 0
    try:
        assert os.path.ismount(mnt)
        with open(os.path.join(mnt, "files/big"), "rb") as f:
            assert f.read() == open(os.path.join(src, "files/big"), "rb").read()
    finally:
        run(["fusermount3", "-u", mnt])
    assert not os.path.ismount(mnt)


def test_help_and_version():
    p = run([tool("composefs-fuse"), "--help"])
    out = p.stdout.decode()
    for opt in ("basedir=", "digest=", "verity=", "passthrough=", "threads=", "tree_cache="):
        assert opt in out
    p = run([tool("composefs-fuse"), "-V"])
    assert p.stdout.decode().startswith("composefs-fuse ")


@pytest.mark.parametrize("unit", ["composefs-fuse@.service", "composefs-fuse-user@.service"])
def test_systemd_unit_runs(gen_tree, tmp_path, unit):
    """Start the daemon the way the unit's ExecStart does, with the unit's
    environment file, and check Type=notify readiness and a clean stop."""
    src, img, objs = gen_tree
    path = os.path.join(os.environ.get("CFS_BUILD", ""), "systemd", unit)
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(os.path.dirname(tool("composefs-fuse"))), "systemd", unit)
    lines = open(path).read().splitlines()
    assert "Type=notify" in lines
    execstart = [l for l in lines if l.startswith("ExecStart=")][0][len("ExecStart="):].split()
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    conf = {"IMAGE": img, "MOUNTPOINT": mnt, "OPTIONS": f"-o basedir={objs},verity=require"}
    argv = [tool("composefs-fuse")]
    for a in execstart[1:]:
        if a == "$OPTIONS":
            argv += conf["OPTIONS"].split()
        elif a.startswith("${"):
            argv.append(conf[a[2:-1]])
        else:
            argv.append(a)
    sockpath, sock = notify_socket(tmp_path)
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, NOTIFY_SOCKET=sockpath))
    try:
        assert "READY=1" in sock.recv(4096).decode()
        with open(os.path.join(mnt, "files/big"), "rb") as f:
            assert f.read() == open(os.path.join(src, "files/big"), "rb").read()
        proc.terminate()                       # what systemctl stop does
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mnt)
    finally:
        _reap(proc, mnt, sock)


@pytest.mark.parametrize("seed", range(6))
def test_corrupted_image_never_crashes(gen_tree, tmp_path, seed):
    """Flip bytes all over the metadata of an image: the daemon either refuses
    it before mounting or serves it, giving errors, without crashing; and it
    still shuts down cleanly (fuse_mount checks the exit status and the
    sanitizers' silence)."""
    src, img, objs = gen_tree
    data = bytearray(open(img, "rb").read())
    rnd = random.Random(seed)
    meta_end = min(len(data), 4 << 20)
    for _ in range(64 if seed % 2 else 8):
        off = rnd.randrange(2048, meta_end)
        data[off] ^= 1 << rnd.randrange(8)
    bad = str(tmp_path / "bad.cfs")
    _w(bad, bytes(data))
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    p = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", f"basedir={objs}", bad, mnt],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if p.poll() is not None:
        err = p.stderr.read()
        assert p.returncode == 1 and "bad.cfs" in err, err     # refused up front
        return
    visited = 0
    try:
        for dirpath, dirnames, filenames in os.walk(mnt, onerror=lambda e: None):
            for n in dirnames + filenames:
                path = os.path.join(dirpath, n)
                visited += 1
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    os.listxattr(path, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        os.readlink(path)
                    elif stat.S_ISREG(st.st_mode):
                        with open(path, "rb") as f:
                            f.read(1 << 20)
            if visited > 50000:
                break
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        rc = p.wait(timeout=30)
    err = p.stderr.read()
    assert rc == 0, err
    assert not SUSPICIOUS.search(err), err
    print(f"corrupted image {seed}: served, {visited} names, "
          f"{len(err.splitlines())} log lines")


def _image_with_corrupt_victim(tmp_path, chardev=False):
    """An image of d/victim (a file, or a character device) and d/fine whose
    victim inode has a data layout that does not exist (7): the reader
    refuses that inode only."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    if chardev:
        os.mknod(src / "d" / "victim", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    else:
        _w(str(src / "d" / "victim"), b"v" * 100)
    _w(str(src / "d" / "fine"), b"f" * 100)
    img = str(tmp_path / "img.cfs")
    run([tool("mkcomposefs"), str(src), img])
    with fuse_mount(img, options=["passthrough=off"]) as (mnt, proc):
        nid = os.lstat(os.path.join(mnt, "d", "victim")).st_ino - 2
    data = bytearray(open(img, "rb").read())
    off = inode_offset(data, nid)
    i_format = int.from_bytes(data[off:off + 2], "little")
    data[off:off + 2] = (i_format | 0xe).to_bytes(2, "little")   # data layout 7: none such
    _w(img, bytes(data))
    return img


def test_corrupt_child_in_a_listing_is_named(tmp_path):
    """A listing of a directory with a corrupt child shows every name, the
    child without attributes, as the kernel's erofs lists names without
    reading inodes; stat of the child fails with EIO, and the log names the
    child's inode, not the directory.  The child is a character device,
    whose inode a listing reads even without READDIRPLUS (it could be a
    whiteout, which is not listed)."""
    img = _image_with_corrupt_victim(tmp_path, chardev=True)
    with fuse_mount(img, options=["passthrough=off", "timeout=0"]) as (mnt, proc):
        d = os.path.join(mnt, "d")
        assert sorted(os.listdir(d)) == ["fine", "victim"]
        assert sorted(e.name for e in os.scandir(d)) == ["fine", "victim"]
        with pytest.raises(OSError) as e:
            os.lstat(os.path.join(d, "victim"))
        assert e.value.errno == errno.EIO
        assert os.path.getsize(os.path.join(d, "fine")) == 100
    lines = [l for l in proc.stderr_text.splitlines() if "is corrupt" in l]
    assert len(lines) == 1, proc.stderr_text
    # the reader's own reason, not one the naming walk left behind
    assert "/d/victim: inode is corrupt: inode nid" in lines[0], lines
    assert "unknown data layout 7" in lines[0], lines


def test_corrupt_inode_logged_once_with_its_path(tmp_path):
    """An inode the reader refuses makes every lookup of its name fail with
    EIO; the daemon says so once, naming the file's path, not once per
    request (nor never, as lookups did)."""
    img = _image_with_corrupt_victim(tmp_path)
    with fuse_mount(img, options=["passthrough=off", "timeout=0"]) as (mnt, proc):
        for _ in range(5):
            with pytest.raises(OSError) as e:
                os.lstat(os.path.join(mnt, "d", "victim"))
            assert e.value.errno == errno.EIO
        assert os.path.getsize(os.path.join(mnt, "d", "fine")) == 100
    lines = [l for l in proc.stderr_text.splitlines() if "is corrupt" in l]
    assert len(lines) == 1, proc.stderr_text
    # the reader's own reason, not one the naming walk left behind
    assert "/d/victim: inode is corrupt: inode nid" in lines[0], lines
    assert "unknown data layout 7" in lines[0], lines


def test_error_log_is_bounded(tmp_path):
    """Errors are logged once per object and for at most 4096 objects: an
    image with more bad inodes than that must not make every later request
    log (and search the tree for a path to name)."""
    src = tmp_path / "src"
    (src / "m").mkdir(parents=True)
    n = 4200
    for i in range(n):
        _w(str(src / "m" / f"f{i}"), b"x")
    img = str(tmp_path / "img.cfs")
    run([tool("mkcomposefs"), str(src), img])
    with fuse_mount(img, options=["passthrough=off"]) as (mnt, proc):
        nids = [e.inode() - 2 for e in os.scandir(os.path.join(mnt, "m"))]
    assert len(nids) == n
    data = bytearray(open(img, "rb").read())
    for nid in nids:
        data[inode_offset(data, nid)] |= 0xe                 # data layout 7: none such
    _w(img, bytes(data))
    mnt, log = str(tmp_path / "mnt"), str(tmp_path / "log")
    os.mkdir(mnt)
    with open(log, "w") as err:                # more than a pipe holds
        proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", "passthrough=off,timeout=0",
                                 img, mnt], stderr=err)
        try:
            wait_for_mount(proc, mnt)
            for i in range(n):
                with pytest.raises(OSError):
                    os.lstat(os.path.join(mnt, "m", f"f{i}"))
        finally:
            subprocess.run(["fusermount3", "-u", mnt])
            assert proc.wait(timeout=60) == 0
    lines = open(log).read().splitlines()
    assert not any(SUSPICIOUS.search(l) for l in lines), lines[-20:]
    assert sum("is corrupt" in l for l in lines) == 4096, lines[-5:]
    assert sum("no more are" in l for l in lines) == 1


def test_error_path_lookup_survives_directory_loops(tmp_path):
    """Naming a corrupt file in the log walks the tree.  A hostile image
    whose directories loop back (d/a and d/b are d again) and whose
    superblock claims 2^40 inodes must not make that walk endless."""
    src = tmp_path / "src"
    for p in ("d/a", "d/b", "z"):
        (src / p).mkdir(parents=True)
    _w(str(src / "z" / "victim"), b"v" * 100)
    img = str(tmp_path / "img.cfs")
    run([tool("mkcomposefs"), str(src), img])
    with fuse_mount(img, options=["passthrough=off"]) as (mnt, proc):
        nid = {p: os.lstat(os.path.join(mnt, p)).st_ino - 2 for p in ("d", "d/a", "d/b", "z/victim")}
    data = bytearray(open(img, "rb").read())
    patched = 0
    for sub in ("d/a", "d/b"):             # dirents of directories a, b -> d
        pat = nid[sub].to_bytes(8, "little")
        i = data.find(pat)
        while i >= 0:
            if data[i + 10] == 2:              # EROFS_FT_DIR
                data[i:i + 8] = nid["d"].to_bytes(8, "little")
                patched += 1
            i = data.find(pat, i + 1)
    assert patched >= 2
    sb_set(data, "inos", 1 << 40)
    off = inode_offset(data, nid["z/victim"])
    data[off] |= 0xe                           # victim: data layout 7
    _w(img, bytes(data))
    with fuse_mount(img, options=["passthrough=off"]) as (mnt, proc):
        p = subprocess.run(["stat", os.path.join(mnt, "z", "victim")], capture_output=True,
                           timeout=60)
        assert p.returncode != 0
    assert "/z/victim: inode is corrupt" in proc.stderr_text, proc.stderr_text


def test_kernel_verity_not_taken_from_a_fuse_store(tmp_path):
    """A FUSE filesystem forwards FS_IOC_MEASURE_VERITY to its server, which
    may answer any digest while serving other data: the store must not even
    ask a FUSE filesystem (a store served by composefs-fuse itself here),
    and then verifies in userspace."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300000)
    _w(str(src / "f"), data)
    img, objs = build_image(str(src), str(tmp_path))
    obj = object_of(img, "f")
    digest = obj.replace("/", "")
    # an image of the store itself: the FUSE mount shows the same xx/yyyy files
    img2 = str(tmp_path / "store.cfs")
    run([tool("mkcomposefs"), objs, img2])
    with fuse_mount(img2, objs, options=["passthrough=off"]) as (fstore, proc):
        assert open(os.path.join(fstore, obj), "rb").read() == data
        p = run([tool("cas-tool"), "read", "--method=kernel", fstore, obj, digest, len(data)],
                check=False)
        head = json.loads(p.stdout.decode().splitlines()[0])
        assert head["open"] == -errno.EOPNOTSUPP, head     # not the server's ENOTTY/ENOSYS
        p = run([tool("cas-tool"), "read", fstore, obj, digest, len(data)])
        lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
        assert lines[0]["open"] == 0 and lines[0]["method"] == "userspace", lines[0]
        assert lines[1]["res"] == len(data) and lines[1]["sha256"] == hashlib.sha256(data).hexdigest()


def test_log_escapes_control_characters_from_the_image(tmp_path):
    """A file name is image data: a newline or an escape sequence in it must
    not split a log message or forge another one."""
    src, objs = tmp_path / "src", tmp_path / "objs"
    src.mkdir()
    objs.mkdir()
    _w(os.path.join(os.fsencode(src), b"evil\nFAKE: forged\x1b[2J"), b"e" * 10000)
    img = str(tmp_path / "img.cfs")
    run([tool("mkcomposefs"), f"--digest-store={objs}", str(src), img])
    for sub in os.listdir(objs):                   # the object goes missing
        shutil.rmtree(objs / sub)
    with fuse_mount(img, str(objs), options=["passthrough=off"]) as (mnt, proc):
        with pytest.raises(OSError) as e:
            open(os.path.join(os.fsencode(mnt), b"evil\nFAKE: forged\x1b[2J"), "rb").read()
        assert e.value.errno == errno.EIO
    err = proc.stderr_text
    assert "/evil\\x0aFAKE: forged\\x1b[2J: cannot open object" in err, err
    assert "not in any basedir" in err, err
    assert not any(l.startswith("FAKE") for l in err.splitlines()) and "\x1b" not in err, err


def test_sigusr1_writes_stats_while_mounted(gen_tree, tmp_path):
    src, img, objs = gen_tree
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=["passthrough=off", f"stats_file={stats}"]) as (fmnt, proc):
        with open(os.path.join(fmnt, "files/mib1"), "rb") as f:
            assert len(f.read()) == (1 << 20) + 1
        assert not os.path.exists(stats)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not os.path.exists(stats) and time.monotonic() < deadline:
            time.sleep(0.05)
        s = _stats(stats)
        assert s["reads"] >= 1 and s["read_bytes"] == (1 << 20) + 1, s
        assert os.path.ismount(fmnt)


def test_stats_file_not_written_through_a_planted_symlink(gen_tree, tmp_path):
    """The temporary stats file has a predictable name: a symlink planted
    there must not make the daemon (root) write through it."""
    src, img, objs = gen_tree
    stats, victim = str(tmp_path / "stats"), str(tmp_path / "victim")
    _w(victim, b"precious")
    with fuse_mount(img, objs, options=["passthrough=off", f"stats_file={stats}"]) as (fmnt, proc):
        os.listdir(fmnt)                       # requests answered: SIGUSR1 is handled
        os.symlink(victim, f"{stats}.tmp.{proc.pid}")
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not os.path.exists(stats) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.islink(stats) and "opens_image" in _stats(stats)
    assert open(victim, "rb").read() == b"precious"


def test_sigusr1_storm_during_shutdown(gen_tree, tmp_path):
    """Stats requested over and over while the daemon unmounts and frees its
    store: the SIGUSR1 thread must never touch what main() has freed (the
    sanitizer build reports a use after free), and the last stats written
    are the final ones."""
    src, img, objs = gen_tree
    stats = str(tmp_path / "stats")
    stop = threading.Event()

    def storm(proc):
        while not stop.is_set() and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            time.sleep(0.0002)

    with fuse_mount(img, objs, options=["passthrough=off", f"stats_file={stats}"]) as (fmnt, proc):
        # a served read: the signal mask is in place once requests are answered
        with open(os.path.join(fmnt, "files/mib1"), "rb") as f:
            assert len(f.read()) == (1 << 20) + 1
        t = threading.Thread(target=storm, args=(proc,))
        t.start()
        try:
            time.sleep(0.3)
            subprocess.run(["fusermount3", "-u", fmnt], check=True)
            proc.wait(timeout=30)
        finally:
            stop.set()
            t.join()
    assert _stats(stats)["read_bytes"] == (1 << 20) + 1


def _status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return line.split()[1]
    return None


def test_root_drops_capabilities_after_mounting(gen_tree):
    src, img, objs = gen_tree
    keep = (1 << 21) | (1 << 1) | (1 << 2)     # SYS_ADMIN, DAC_OVERRIDE, DAC_READ_SEARCH
    with fuse_mount(img, objs, options=["verity=off"]) as (fmnt, proc):
        with open(os.path.join(fmnt, "files/big"), "rb") as f:   # passthrough still works
            assert f.read() == open(os.path.join(src, "files/big"), "rb").read()
        for key in ("CapEff", "CapPrm", "CapBnd"):
            assert int(_status(proc.pid, key), 16) & ~keep == 0, key
        assert _status(proc.pid, "NoNewPrivs") == "1"
    assert "kernel passthrough" in proc.stderr_text
    with fuse_mount(img, objs, options=["keep_caps"]) as (fmnt, proc):
        assert int(_status(proc.pid, "CapEff"), 16) & ~keep != 0


def test_kernel_caches_entries_listings_and_trees(gen_tree, tmp_path):
    """Negative lookups, positive lookups and directory listings are answered
    by the kernel's caches the second time; Merkle trees are saved in the
    tree cache for the next mount."""
    src, img, objs = gen_tree
    stats = str(tmp_path / "stats")
    trees = tmp_path / "trees"

    def snap(proc):
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.path.exists(stats):
                s = _stats(stats)
                os.unlink(stats)
                return s
            time.sleep(0.02)
        raise AssertionError("no stats")

    with fuse_mount(img, objs, options=[f"stats_file={stats}", f"tree_cache={trees}",
                                        "passthrough=off"]) as (fmnt, proc):
        missing = os.path.join(fmnt, "files", "no-such-file")
        assert not os.path.exists(missing)
        os.listdir(os.path.join(fmnt, "many"))
        os.stat(os.path.join(fmnt, "files", "one"))
        with open(os.path.join(fmnt, "files", "mib1"), "rb") as f:
            f.read()
        first = snap(proc)
        assert not os.path.exists(missing)
        assert len(os.listdir(os.path.join(fmnt, "many"))) == 10000
        os.stat(os.path.join(fmnt, "files", "one"))
        second = snap(proc)
    assert first["lookups"] >= 3 and first["readdirs"] >= 1
    assert second["lookups"] == first["lookups"], (first, second)
    assert second["readdirs"] == first["readdirs"], (first, second)
    # mib1's tree came from the store, where mkcomposefs put it
    assert first["cas_trees_from_store"] == 1 and first["cas_trees_built"] == 0, first
