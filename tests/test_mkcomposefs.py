# SPDX-License-Identifier: LGPL-2.1-or-later
"""mkcomposefs and composefs-dump: byte-exact images for the conformance
vectors, strict rejection of bad dumps with no output left behind, directory
scanning with hard links kept, the digest store, and real kernel mounts."""
import hashlib
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from conftest import (CONFORMANCE, REPO, assert_same_tree, kernel_mount, needs_root, run, snapshot,
                      tool)
from erofs_layout import sb_get

DUMPS = os.path.join(CONFORMANCE, "dumps")
IMAGES = os.path.join(CONFORMANCE, "images")
SHOULD_FAIL = os.path.join(CONFORMANCE, "should-fail")

DUMP_NAMES = sorted(f[:-5] for f in os.listdir(DUMPS) if f.endswith(".dump"))
FAIL_NAMES = sorted(os.listdir(SHOULD_FAIL))
IMAGE_NAMES = sorted(f for f in os.listdir(IMAGES) if f.endswith(".cfs"))
# Upstream accepts these only without CFS_PARSE_STRICT (README of the vectors).
NON_STRICT = {"no-newline", "longlink", "honggfuzz-longlink-unterminated"}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def version_flags(name):
    vf = os.path.join(DUMPS, name + ".dump.version")
    if not os.path.exists(vf):
        return []
    v = open(vf).read().strip()
    return [f"--min-version={v}", f"--max-version={v}"]


def header_version(image):
    with open(image, "rb") as f:
        hdr = f.read(16)
    assert int.from_bytes(hdr[0:4], "little") == 0xd078629a
    return int.from_bytes(hdr[12:16], "little")


def fsverity_digest(path):
    out = run(["fsverity", "digest", "--compact", path]).stdout.decode().strip()
    return out.split()[-1].split(":")[-1]


# ---- conformance vectors ---------------------------------------------------------


@pytest.mark.parametrize("name", DUMP_NAMES)
def test_conformance_dump_sha256(tmp, name):
    img = tmp / "out.cfs"
    run([tool("mkcomposefs"), *version_flags(name), "--from-file",
         os.path.join(DUMPS, name + ".dump"), img])
    want = open(os.path.join(DUMPS, name + ".dump.sha256")).read().split()[0]
    assert sha256(img) == want
    # ... and it is the committed upstream image, byte for byte
    assert open(img, "rb").read() == open(os.path.join(IMAGES, name + ".cfs"), "rb").read()
    run(["fsck.erofs", img])


WRITER_DATA = os.path.join(os.path.dirname(CONFORMANCE), "writer")
WRITER_VECTORS = sorted(f[:-7] for f in os.listdir(WRITER_DATA) if f.endswith(".sha256"))


@pytest.mark.parametrize("vector", WRITER_VECTORS)
def test_writer_vectors(tmp, vector):
    """Extra dumps whose upstream image digests are committed."""
    name, _, v0 = vector.partition(".dump")
    img = tmp / "out.cfs"
    run([tool("mkcomposefs"), *(["--max-version=0"] if v0 else []), "--from-file",
         os.path.join(WRITER_DATA, name + ".dump"), img])
    assert sha256(img) == open(os.path.join(WRITER_DATA, vector + ".sha256")).read().split()[0]
    run(["fsck.erofs", img])
    if name.startswith("generated-"):
        return  # random trees hold things an image cannot say back (digests of devices...)
    again = tmp / "again.cfs"
    run([tool("composefs-dump"), img, again])
    assert open(again, "rb").read() == open(img, "rb").read()


@pytest.mark.parametrize("name", DUMP_NAMES)
def test_conformance_strict_mode(tmp, name):
    img = tmp / "out.cfs"
    env = dict(os.environ, CFS_PARSE_STRICT="1")
    p = run([tool("mkcomposefs"), *version_flags(name), "--from-file",
             os.path.join(DUMPS, name + ".dump"), img], check=False, env=env)
    if name in NON_STRICT:
        assert p.returncode != 0
        assert not img.exists()
    else:
        assert p.returncode == 0, p.stderr
        assert sha256(img) == open(os.path.join(DUMPS, name + ".dump.sha256")).read().split()[0]


@pytest.mark.parametrize("name", DUMP_NAMES)
def test_conformance_stdin_stdout(tmp, name):
    with open(os.path.join(DUMPS, name + ".dump"), "rb") as f:
        p = subprocess.run([tool("mkcomposefs"), *version_flags(name), "--from-file", "-", "-"],
                           stdin=f, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert hashlib.sha256(p.stdout).hexdigest() == \
        open(os.path.join(DUMPS, name + ".dump.sha256")).read().split()[0]


@pytest.mark.parametrize("name", FAIL_NAMES)
def test_should_fail(tmp, name):
    out = tmp / "out"
    out.mkdir()
    src = os.path.join(SHOULD_FAIL, name)
    p = run([tool("mkcomposefs"), "--from-file", src, out / "img.cfs"], check=False)
    assert p.returncode != 0
    err = p.stderr.decode()
    lines = err.strip().split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mkcomposefs: {src}: "), err
    assert len(lines[0]) > len(f"mkcomposefs: {src}: ") + 5
    assert os.listdir(out) == [], "output or temporary file left behind"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_composefs_dump_roundtrip(tmp, name):
    out = tmp / "again.cfs"
    run([tool("composefs-dump"), os.path.join(IMAGES, name), out])
    assert open(out, "rb").read() == open(os.path.join(IMAGES, name), "rb").read()


def test_composefs_dump_rejects_garbage(tmp):
    bad = tmp / "bad.cfs"
    data = bytearray(open(os.path.join(IMAGES, "special.cfs"), "rb").read())
    data[1024:1028] = b"\0\0\0\0"  # EROFS magic
    bad.write_bytes(bytes(data))
    out = tmp / "out"
    out.mkdir()
    p = run([tool("composefs-dump"), bad, out / "x.cfs"], check=False)
    assert p.returncode != 0
    assert p.stderr.decode().startswith(f"composefs-dump: {bad}: ")
    assert len(p.stderr.decode().strip().split("\n")) == 1
    # the reason names what is wrong, not only "corrupt image"
    assert "EROFS superblock magic" in p.stderr.decode()
    assert os.listdir(out) == []
    # damage found while reading the tree is named too: the root
    # directory's first dirent claims a name offset inside the dirents
    data = bytearray(open(os.path.join(IMAGES, "special.cfs"), "rb").read())
    root_nid = sb_get(data, "root_nid")
    ino = 32 * root_nid  # nid 0 is byte 0: meta_blkaddr is 0 in mkcomposefs images
    isize = 32 if not (data[ino] & 1) else 64
    icount = int.from_bytes(data[ino + 2:ino + 4], "little")
    tail = ino + isize + (12 + 4 * (icount - 1) if icount else 0)
    layout = (data[ino] >> 1) & 7
    size = int.from_bytes(data[ino + 8:ino + 12], "little")
    first_block = 4096 * int.from_bytes(data[ino + 16:ino + 20], "little")
    dirents = tail if layout == 2 and size <= 4096 else first_block
    data[dirents + 8:dirents + 10] = (13).to_bytes(2, "little")
    bad.write_bytes(bytes(data))
    p = run([tool("composefs-dump"), bad, out / "x.cfs"], check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and len(err.strip().split("\n")) == 1, err
    assert f"composefs-dump: {bad}: corrupt image: directory nid {root_nid}: bad de[0].nameoff 13" in err, err
    assert os.listdir(out) == []


# ---- command line ------------------------------------------------------------------


@pytest.mark.parametrize("prog", ["mkcomposefs", "composefs-dump"])
def test_help(prog):
    p = run([tool(prog), "--help"])
    assert b"Usage:" in p.stdout
    p = run([tool(prog), "--no-such-option"], check=False)
    assert p.returncode != 0


def test_cli_errors(tmp):
    mk = tool("mkcomposefs")
    cases = [
        ([], "no source"),
        ([tmp / "missing", tmp / "o.cfs"], "missing"),
        (["--from-file", tmp / "missing.dump", tmp / "o.cfs"], "missing.dump"),
        (["--min-version=2", os.path.join(DUMPS, "special.dump"), tmp / "o.cfs"], "min-version"),
        (["--max-version=x", os.path.join(DUMPS, "special.dump"), tmp / "o.cfs"], "max-version"),
        (["--threads=0", tmp, tmp / "o.cfs"], "threads"),
        # an empty store path read before its start under ASan
        (["--digest-store=", tmp, tmp / "o.cfs"], "digest-store"),
        (["--print-digest-only", tmp, tmp / "o.cfs"], "print-digest-only"),
        ([os.path.join(DUMPS, "special.dump"), tmp / "o.cfs"], "not a directory"),
    ]
    for args, needle in cases:
        p = run([mk, *args], check=False)
        assert p.returncode != 0, args
        err = p.stderr.decode()
        assert len(err.strip().split("\n")) == 1 and needle in err, (args, err)
        assert not (tmp / "o.cfs").exists()
    p = run([tool("composefs-dump"), tmp / "nope.cfs", tmp / "o.cfs"], check=False)
    assert p.returncode != 0 and "nope.cfs" in p.stderr.decode()


def test_print_digest(tmp):
    src = os.path.join(DUMPS, "special.dump")
    img = tmp / "i.cfs"
    p = run([tool("mkcomposefs"), "--print-digest", "--from-file", src, img])
    digest = p.stdout.decode().strip()
    assert len(digest) == 64
    assert digest == fsverity_digest(img)
    p = run([tool("mkcomposefs"), "--print-digest-only", "--from-file", src])
    assert p.stdout.decode().strip() == digest
    assert sorted(os.listdir(tmp)) == ["i.cfs"]


def test_version_selection(tmp):
    """Whiteouts need format 1: chosen when allowed, never above max."""
    special = os.path.join(DUMPS, "special.dump")  # has a 0:0 chardev
    plain = os.path.join(DUMPS, "longlink.dump")
    cases = [([], special, 1), (["--max-version=0"], special, 0),
             (["--min-version=1"], special, 1), ([], plain, 0), (["--min-version=1"], plain, 1)]
    for flags, src, want in cases:
        img = tmp / "v.cfs"
        run([tool("mkcomposefs"), *flags, "--from-file", src, img])
        assert header_version(img) == want, (flags, src)


def test_dump_parser_edge_cases(tmp):
    """Inputs upstream accepts must build; hostile ones must be refused
    with a line number."""
    ok = [
        "/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -",  # no final newline
        "/ 0 40755 2 0 0 0 0.0 - - -\n/a\\x20b 3 100644 1 0 0 0 5.7 - abc -\n",
        "/ 0 40755 2 0 0 0 0.0 - - -\n/l 0 @100644 1 0 0 0 0.0 /f - -\n/f 1 100644 1 0 0 0 0.0 - x -\n",
        "/ 0 40755 2 0 0 0 0.0 - - - user.a=1 trusted.overlay.x=\\x3d\n",
    ]
    bad = [
        ("", "no files"),
        ("/a 0 100644 1 0 0 0 0.0 - - -\n", "line 1"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n\n", "line 2"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0 - - -\n", "line 2"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 1 100644 1 0 0 0 0.0 - - zz\n", "digest"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 2 100644 1 0 0 0 0.0 - abc -\n", "size"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - - noequals\n", "="),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 \\q - -\n", "escape"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/d/a 0 100644 1 0 0 0 0.0 - - -\n", "parent"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n",
         "exists"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n",
         "cycle"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n/l 0 @100644 1 0 0 0 0.0 /d - -\n",
         "directory"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a\x00 0 100644 1 0 0 0 0.0 - - -\n", "NUL"),
        ("/ 0 40755 2 0 0 0 0.0 - - -\n/a\\nb/c 0 100644 1 0 0 0 0.0 - - -\n", "/a\\x0ab/c"),
    ]
    for i, text in enumerate(ok):
        d = tmp / f"ok{i}.dump"
        d.write_text(text)
        run([tool("mkcomposefs"), "--from-file", d, tmp / f"ok{i}.cfs"])
        run(["fsck.erofs", tmp / f"ok{i}.cfs"])
    for i, (text, needle) in enumerate(bad):
        d = tmp / f"bad{i}.dump"
        d.write_text(text)
        p = run([tool("mkcomposefs"), "--from-file", d, tmp / f"bad{i}.cfs"], check=False)
        assert p.returncode != 0, text
        assert needle in p.stderr.decode(), (text, p.stderr)
        assert len(p.stderr.decode().strip().split("\n")) == 1, p.stderr
        assert not (tmp / f"bad{i}.cfs").exists()


# ---- directories --------------------------------------------------------------------


def escape(b, xattr_key=False):
    out = []
    for c in b:
        ch = chr(c)
        if ch == "\\":
            out.append("\\\\")
        elif c < 0x21 or c > 0x7e or (xattr_key and ch == "="):
            out.append("\\x%02x" % c)
        else:
            out.append(ch)
    return "".join(out)


def dump_of_tree(root):
    """A dump file describing ROOT the way mkcomposefs scans it, written
    independently of the tools: hard links become '@' lines to the first
    path in sorted depth-first order."""
    lines, first = [], {}

    def entry(path, rel):
        st = os.lstat(path)
        name = "/" + rel if rel else "/"
        ename = escape(os.fsencode(name))
        mtime = f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9}"
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in first:
            lines.append(f"{ename} 0 @{st.st_mode:o} 0 0 0 0 0.0 {escape(os.fsencode(first[key]))} - -")
            return
        xattrs = []
        for k in sorted(os.listxattr(path, follow_symlinks=False)):
            v = os.getxattr(path, k, follow_symlinks=False)
            xattrs.append(escape(os.fsencode(k), True) + "=" + escape(v))
        payload, content, digest, size = "-", "-", "-", st.st_size
        if stat.S_ISLNK(st.st_mode):
            payload = escape(os.fsencode(os.readlink(path)))
        elif stat.S_ISREG(st.st_mode) and 0 < st.st_size <= 64:
            content = escape(open(path, "rb").read())
        elif stat.S_ISREG(st.st_mode) and st.st_size > 64:
            digest = fsverity_digest(path)
            payload = f"{digest[:2]}/{digest[2:]}"
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        nlink = 1
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            first[key] = name
            nlink = links_in_tree[key]
        lines.append(" ".join([ename, str(size), f"{st.st_mode:o}", str(nlink), str(st.st_uid),
                               str(st.st_gid), str(rdev), mtime, payload, content, digest] + xattrs))

    links_in_tree = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            if not stat.S_ISDIR(st.st_mode):
                k = (st.st_dev, st.st_ino)
                links_in_tree[k] = links_in_tree.get(k, 0) + 1

    def walk(path, rel):
        entry(path, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            for n in sorted(os.listdir(path), key=os.fsencode):
                walk(os.path.join(path, n), (rel + "/" if rel else "") + n)

    walk(str(root), "")
    return "\n".join(lines) + "\n"


def populate_extras(d):
    """Every file type, hard links, xattrs of several namespaces, sizes
    around the 64-byte inline limit, odd names."""
    os.makedirs(d / "extra" / "sub" / "deeper")
    (d / "extra" / "empty").write_bytes(b"")
    (d / "extra" / "exact64").write_bytes(bytes(range(64)))
    (d / "extra" / "just65").write_bytes(bytes(range(65)))
    (d / "extra" / "block").write_bytes(os.urandom(4096))
    (d / "extra" / "bigger").write_bytes(os.urandom(300000))
    (d / "extra" / "name with spaces\tand=eq").write_bytes(b"odd name\n")
    os.link(d / "extra" / "just65", d / "extra" / "sub" / "link-to-65")
    os.link(d / "extra" / "just65", d / "extra" / "sub" / "deeper" / "another-65")
    os.link(d / "extra" / "exact64", d / "extra" / "hl-small")
    os.link(d / "extra" / "empty", d / "extra" / "sub" / "hl-empty")
    os.symlink("../just65", d / "extra" / "sub" / "rel-symlink")
    os.symlink("/nonexistent/target/" + "x" * 300, d / "extra" / "long-symlink")
    os.mkfifo(d / "extra" / "fifo")
    os.mknod(d / "extra" / "null-like", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.mknod(d / "extra" / "blockdev", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    f = d / "extra" / "bigger"
    os.setxattr(f, "user.comment", b"hello")
    os.setxattr(f, "trusted.something", b"\x00\x01\x02")
    os.setxattr(f, "security.label", b"sec-value")
    os.setxattr(f, "trusted.overlay.custom", b"escaped-by-the-writer")
    for i, p in enumerate(["exact64", "block", "sub", "fifo"]):
        os.setxattr(d / "extra" / p, "trusted.shared", b"same value everywhere")
        os.setxattr(d / "extra" / p, f"trusted.own{i}", b"v" * (i * 50))
    os.setxattr(d / "extra" / "just65", "user.hard", b"on the linked inode")
    os.chown(d / "extra" / "block", 1234, 5678)
    os.chown(d / "extra" / "sub" / "rel-symlink", 99, 98, follow_symlinks=False)
    os.chmod(d / "extra" / "just65", 0o4751)
    os.utime(d / "extra" / "block", ns=(1, 123456789))


@needs_root
def test_hardlinks_scan_equals_dump(tmp):
    src = tmp / "src"
    src.mkdir()
    populate_extras(src)
    scanned, from_dump = tmp / "scan.cfs", tmp / "dump.cfs"
    run([tool("mkcomposefs"), src, scanned])
    dump = tmp / "tree.dump"
    dump.write_text(dump_of_tree(src), errors="surrogateescape")
    assert " @100" in dump.read_text(errors="surrogateescape")
    run([tool("mkcomposefs"), "--from-file", dump, from_dump])
    assert open(scanned, "rb").read() == open(from_dump, "rb").read()
    run(["fsck.erofs", scanned])
    # the round trip through the reader keeps the hard links too
    again = tmp / "again.cfs"
    run([tool("composefs-dump"), scanned, again])
    assert open(again, "rb").read() == open(scanned, "rb").read()


@pytest.fixture(scope="module")
def doc_tree(tmp_path_factory):
    top = tmp_path_factory.mktemp("doc")
    src = top / "src"
    shutil.copytree("/usr/share/doc", src, symlinks=True)
    populate_extras(src)
    return src


def compare_view(snap):
    """Drop what legitimately differs between a source directory and its
    composefs mount: directory link counts (overlayfs reports its own)."""
    out = {}
    for k, e in snap.items():
        if isinstance(e, dict) and stat.S_ISDIR(e["mode"]):
            e = dict(e, nlink=None)
        out[k] = e
    return out


@needs_root
def test_digest_store_kernel_mount(tmp, doc_tree):
    objects, img = tmp / "objects", tmp / "doc.cfs"
    p = run([tool("mkcomposefs"), "--print-digest", f"--digest-store={objects}", "--threads=2",
             doc_tree, img])
    assert p.stdout.decode().strip() == fsverity_digest(img)
    run(["fsck.erofs", img])

    # The store holds each object under its fs-verity digest, and the
    # Merkle trees of objects over 128 KiB in .cfs-trees, nothing else.
    n_objects, want_trees = 0, set()
    for sub in os.listdir(objects):
        if sub == ".cfs-trees":
            continue
        assert len(sub) == 2
        for name in os.listdir(objects / sub):
            assert len(name) == 62 and not name.startswith("."), name
            assert fsverity_digest(objects / sub / name) == sub + name
            n_objects += 1
            if os.path.getsize(objects / sub / name) > 128 * 1024:
                want_trees.add(sub + name)
    assert n_objects > 100
    trees = objects / ".cfs-trees"
    assert {s + n for s in os.listdir(trees) for n in os.listdir(trees / s)} == want_trees

    expected = compare_view(snapshot(str(doc_tree)))
    n_files = sum(1 for e in expected.values() if isinstance(e, dict) and stat.S_ISREG(e["mode"]))
    assert n_files > 1000
    with kernel_mount(img, objects) as mnt:
        got = compare_view(snapshot(str(mnt)))
    assert_same_tree(expected, got)
    assert ["extra/exact64", "extra/hl-small"] in got["<hardlinks>"]
    assert sorted(["extra/just65", "extra/sub/link-to-65", "extra/sub/deeper/another-65"]) in \
        got["<hardlinks>"]

    # A second run reuses the objects and gives the same image.
    before = {(s, n): os.stat(objects / s / n).st_ino
              for s in os.listdir(objects) for n in os.listdir(objects / s)}
    img2 = tmp / "doc2.cfs"
    run([tool("mkcomposefs"), f"--digest-store={objects}", "--threads=1", doc_tree, img2])
    assert open(img, "rb").read() == open(img2, "rb").read()
    after = {(s, n): os.stat(objects / s / n).st_ino
             for s in os.listdir(objects) for n in os.listdir(objects / s)}
    assert before == after


@needs_root
def test_scan_options(tmp):
    src = tmp / "src"
    src.mkdir()
    populate_extras(src)
    mk = tool("mkcomposefs")
    for flags in (["--skip-xattrs"], ["--user-xattrs"], ["--skip-devices"], ["--use-epoch"]):
        img = tmp / "o.cfs"
        run([mk, *flags, src, img])
        run(["fsck.erofs", img])
        with kernel_mount(img, tmp) as mnt:
            snap = snapshot(mnt, content=False)
        e = snap["extra/bigger"]
        if flags == ["--skip-xattrs"]:
            assert e["xattrs"] == {}
        elif flags == ["--user-xattrs"]:
            assert set(e["xattrs"]) == {"user.comment"}
        else:
            assert set(e["xattrs"]) == {"user.comment", "trusted.something", "security.label",
                                        "trusted.overlay.custom"}
        assert ("extra/null-like" in snap) == (flags != ["--skip-devices"])
        assert ("extra/blockdev" in snap) == (flags != ["--skip-devices"])
        if flags == ["--use-epoch"]:
            assert all(v["mtime"] == 0 for k, v in snap.items() if k != "<hardlinks>")


def test_digest_store_source_changing_under_mkcomposefs(tmp):
    """A file rewritten while mkcomposefs hashes and copies it: every run
    either fails naming the file ("changed while building the image") or
    stores only objects whose fs-verity digest is their name; no temporary
    file is ever left.  (The refusal itself is checked deterministically by
    test_store_import_checks_copy in tests/unit/test-writer.c.)"""
    import threading
    src = tmp / "src"
    src.mkdir()
    big = src / "big"
    size = 16 << 20
    with open(big, "wb") as f:
        f.write(bytes(size))
    stop = threading.Event()

    def mutate():
        fd = os.open(big, os.O_WRONLY)
        try:
            i = 0
            while not stop.is_set():
                os.pwrite(fd, bytes([i & 0xff]) * 4096, (i * 4096 * 97) % size)
                i += 1
        finally:
            os.close(fd)

    t = threading.Thread(target=mutate)
    t.start()
    failures = 0
    try:
        for n in range(6):
            objects = tmp / f"objects{n}"
            p = run([tool("mkcomposefs"), f"--digest-store={objects}", "--threads=1", src,
                     tmp / f"o{n}.cfs"], check=False)
            if p.returncode != 0:
                failures += 1
                err = p.stderr.decode()
                assert "changed while building the image" in err and str(big) in err, err
                assert len(err.strip().splitlines()) == 1, err
                assert not os.path.exists(tmp / f"o{n}.cfs")
            for sub in os.listdir(objects) if os.path.isdir(objects) else []:
                if sub == ".cfs-trees":
                    continue   # checked against the digest by every reader
                for name in os.listdir(objects / sub):
                    assert not name.startswith("."), name
                    assert fsverity_digest(objects / sub / name) == sub + name
    finally:
        stop.set()
        t.join()
    print(f"{failures} of 6 runs saw the source change")


@pytest.mark.parametrize("name", ["mkcomposefs", "composefs-info", "composefs-dump", "composefs-fuse"])
def test_every_tool_answers_version_and_help(name):
    """--version and --help on every tool: exit 0, on stdout, the version
    the build was made as (meson.build's project version)."""
    want = re.search(r"version: '([^']+)'", open(os.path.join(REPO, "meson.build")).read()).group(1)
    for flag in ("--version", "-V"):
        p = run([tool(name), flag])
        assert p.returncode == 0
        assert p.stdout.decode().startswith(f"{name} {want}"), p.stdout
    p = run([tool(name), "--help"])
    out = p.stdout.decode()
    assert p.returncode == 0 and out.lower().startswith("usage:"), out[:200]
    assert "--version" in out


@pytest.mark.parametrize("name", ["mkcomposefs", "composefs-info", "composefs-dump", "composefs-fuse"])
def test_man_page_documents_every_option(name):
    """Every option --help lists is in the tool's manual page, which also
    has ENVIRONMENT and FILES sections and the version in its header."""
    help_text = run([tool(name), "--help"]).stdout.decode()
    page = open(os.path.join(REPO, "man", name + ".1")).read().replace("\\-", "-")
    page = re.sub(r'^\.SH "(.*)"$', r".SH \1", page, flags=re.M)
    if name == "composefs-fuse":
        # "    name=VALUE   ..." lines of our own options, before libfuse's.
        ours = help_text.split("FUSE options:")[0]
        opts = re.findall(r"^    ([a-z_]+)(?:[=, ]|$)", ours, re.M)
    else:
        opts = re.findall(r"(--[a-z][a-z-]*)", help_text)
    assert len(opts) >= 2, help_text
    missing = [o for o in sorted(set(opts)) if o not in page]
    assert not missing, f"{name}.1 lacks {missing}"
    for section in (".SH ENVIRONMENT", ".SH FILES", ".SH EXIT STATUS"):
        assert section in page, section
    assert '"composefs-fuse @VERSION@"' in page.split("\n")[1]


def test_killed_import_leaves_no_temporary_file(tmp_path):
    """mkcomposefs --digest-store killed in the middle of copying an object
    leaves no half-written file in the store: each object is copied into
    an unnamed O_TMPFILE file and linked in once complete."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        with open(src / f"f{i}", "wb") as f:
            for _ in range(16):
                f.write(os.urandom(16 << 20))  # 256 MiB: a copy takes a while
    store = tmp_path / "store"
    p = subprocess.Popen([tool("mkcomposefs"), f"--digest-store={store}", "--threads=1",
                          str(src), str(tmp_path / "img")], stderr=subprocess.PIPE)
    try:
        # The object's directory is made just before its copy starts.
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline and \
                not (store.exists() and any(len(n) == 2 for n in os.listdir(store))):
            time.sleep(0.002)
        time.sleep(0.05)
        assert p.poll() is None, "finished before it could be killed"
        p.kill()
    finally:
        p.wait()
    names = [n for d, _, ns in os.walk(store) for n in ns]
    assert not [n for n in names if n.startswith(".tmp")], names
    assert not (tmp_path / "img").exists()


def test_progress_on_a_terminal_only(tmp_path):
    """On a terminal, mkcomposefs --digest-store shows files, bytes and rate
    while it works, and erases the line at the end; piped, it prints
    nothing (the output stays what upstream's is)."""
    import pty
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        with open(src / f"f{i}", "wb") as f:
            f.write(os.urandom(64 << 20))
    master, slave = pty.openpty()
    p = subprocess.Popen([tool("mkcomposefs"), f"--digest-store={tmp_path / 'store'}", "--threads=1",
                          str(src), str(tmp_path / "img")], stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait() == 0
    assert re.search(rb"\rmkcomposefs: \d+/6 files, \d+/384 MiB, \d+ MiB/s", out), out
    assert out.endswith(b"\r\x1b[K"), out[-40:]
    p = run([tool("mkcomposefs"), f"--digest-store={tmp_path / 'store2'}", str(src), str(tmp_path / "img2")])
    assert p.stderr == b""
