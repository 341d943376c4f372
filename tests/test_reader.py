# SPDX-License-Identifier: LGPL-2.1-or-later
"""The image reader through composefs-info: upstream-identical dump/ls/objects
output on the conformance and rich images, clean failures on corrupt images,
and the raw reader view against the kernel's own EROFS mount."""
import glob
import hashlib
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import tempfile

import pytest

from conftest import CONFORMANCE, DATA, SUSPICIOUS, is_root, needs_root, run, tool
from erofs_layout import COMPAT_SB_CHKSUM, sb_get, sb_offset, sb_set

IMAGES = sorted(glob.glob(os.path.join(CONFORMANCE, "images", "*.cfs")) +
                glob.glob(os.path.join(DATA, "reader", "*.cfs")))
RICH = os.path.join(DATA, "reader", "rich-v1.cfs")


def info(*args, check=True, **kw):
    return run([tool("composefs-info"), *args], check=check, **kw)


def image_id(p):
    return os.path.basename(p)


# --------------------------------------------------------------------------
# The dump format, parsed independently of the C code, to derive what the
# other commands must print.

def unescape(s):
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            n = s[i + 1]
            if n == "x":
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            out += {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}[n]
            i += 2
            continue
        out += c.encode("latin-1")
        i += 1
    return bytes(out)


def escape(b, keep_space=False):
    """composefs-info's escaping: \\\\ \\n \\r \\t, hex for the rest of the
    non-graphic bytes (spaces kept in `ls` paths)."""
    out = []
    for c in b:
        if c in b"\\\n\r\t":
            out.append({0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}[c])
        elif 0x21 <= c <= 0x7E or (keep_space and c == 0x20):
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


def parse_dump(text):
    entries = []
    for line in text.splitlines():
        f = line.split(" ")
        entries.append({
            "path": unescape(f[0]), "size": int(f[1]), "hardlink": f[2].startswith("@"),
            "mode": int(f[2].lstrip("@"), 8),
            "payload": None if f[8] == "-" else unescape(f[8]),
        })
    return entries


def expected_ls(entries):
    out = []
    for e in entries[1:]:  # not the root
        line = escape(e["path"], keep_space=True)
        t = stat.S_IFMT(e["mode"])
        if e["hardlink"]:
            pass  # upstream prints only the path of a hard link
        elif t == stat.S_IFDIR:
            line += "/\t"
        elif t == stat.S_IFLNK:
            line += "\t-> " + escape(e["payload"])
        elif t == stat.S_IFREG and e["payload"] is not None:
            line += "\t@ " + escape(e["payload"])
        out.append(line + "\n")
    return "".join(out)


def expected_objects(entries):
    objs = {e["payload"] for e in entries
            if not e["hardlink"] and stat.S_ISREG(e["mode"]) and e["payload"] is not None}
    return b"".join(o + b"\n" for o in sorted(objs))


def dump_text(image):
    with open(image + ".info-dump", "rb") as f:
        return f.read()


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_dump_matches_upstream(image):
    p = info("dump", image)
    assert p.stdout == dump_text(image)
    assert p.stderr == b""


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_ls_and_objects(image):
    entries = parse_dump(dump_text(image).decode("latin-1"))
    assert info("ls", image).stdout.decode("latin-1") == expected_ls(entries)
    assert info("objects", image).stdout == expected_objects(entries)


def test_rich_image_has_what_the_checks_need():
    """The derived expectations above are only meaningful if the data has
    hard links, external objects, symlinks and odd names."""
    entries = parse_dump(dump_text(RICH).decode("latin-1"))
    assert sum(e["hardlink"] for e in entries) >= 3
    assert len(expected_objects(entries).splitlines()) >= 100
    assert any(b" " in e["path"] or b"\n" in e["path"] for e in entries)
    assert any(stat.S_ISLNK(e["mode"]) for e in entries)


def test_missing_objects(tmp):
    entries = parse_dump(dump_text(RICH).decode("latin-1"))
    objects = expected_objects(entries).splitlines()
    store = tmp / "store"
    present = objects[::2]
    def touch(base, o):
        p = os.path.join(os.fsencode(base), o.lstrip(b"/"))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").close()

    for o in present:
        touch(store, o)
    missing = b"".join(o + b"\n" for o in objects if o not in present)
    assert info(f"--basedir={store}", "missing-objects", RICH).stdout == missing
    # Several images: the union of their objects, sorted, once each.
    both = info(f"--basedir={store}", "missing-objects", RICH,
                os.path.join(DATA, "reader", "rich-v0.cfs")).stdout
    assert both == missing
    # Several base directories separated by ':' (present in any counts).
    other = tmp / "other"
    for o in objects[1::2]:
        touch(other, o)
    assert info(f"--basedir={store}:{other}", "missing-objects", RICH).stdout == b""
    # Without --basedir every object is missing, as upstream.
    assert info("missing-objects", RICH).stdout == b"".join(o + b"\n" for o in objects)


def test_filter(tmp):
    entries = parse_dump(dump_text(RICH).decode("latin-1"))
    out = info("--filter=inline", "--filter=sym", "dump", RICH).stdout.decode("latin-1")
    paths = [unescape(l.split(" ")[0]) for l in out.splitlines()]
    want = [e["path"] for e in entries
            if e["path"] == b"/" or e["path"].split(b"/")[1] in (b"inline", b"sym")]
    assert paths == want
    p = info("--filter=a/b", "ls", RICH, check=False)
    assert p.returncode != 0 and b"a/b" in p.stderr


def test_measure_file(tmp):
    for size in (0, 1, 4096, 4097, 100000):
        f = tmp / f"f{size}"
        f.write_bytes(os.urandom(size))
        p = info("measure-file", f)
        assert re.fullmatch(rb"[0-9a-f]{64}\n", p.stdout)
        if shutil.which("fsverity"):
            ref = run(["fsverity", "digest", "--compact", f]).stdout
            assert p.stdout == ref
    p = info("measure-file", tmp / "nope", check=False)
    assert p.returncode == 1 and b"nope" in p.stderr and p.stderr.count(b"\n") == 1


def test_usage_errors(tmp):
    assert info("--help").stdout.startswith(b"Usage:")
    for args in ([], ["frobnicate", RICH], ["dump"], ["--basedir", str(tmp / "none"), "dump", RICH]):
        p = info(*args, check=False)
        assert p.returncode == 1, args
        assert p.stderr and not SUSPICIOUS.search(p.stderr.decode("latin-1"))
    p = info("dump", str(tmp / "missing.cfs"), check=False)
    assert p.returncode == 1 and b"missing.cfs" in p.stderr
    p = info("dump", str(tmp), check=False)
    assert p.returncode == 1 and str(tmp).encode() in p.stderr


# --------------------------------------------------------------------------
# Corrupt images.  A tiny EROFS parser locates the structures to damage.

def u16(b, o):
    return struct.unpack_from("<H", b, o)[0]


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


class Image:
    def __init__(self, data):
        self.data = bytearray(data)
        sb = 1024
        self.root = u16(self.data, sb + 14)
        self.meta = u32(self.data, sb + 40) * 4096
        self.xattr = u32(self.data, sb + 44) * 4096

    def ioff(self, nid):
        return self.meta + nid * 32

    def inode(self, nid):
        o = self.ioff(nid)
        d = self.data
        fmt = u16(d, o)
        ext = fmt & 1
        size = struct.unpack_from("<Q", d, o + 8)[0] if ext else u32(d, o + 8)
        icount = u16(d, o + 2)
        return {"off": o, "ext": ext, "layout": (fmt >> 1) & 7, "icount": icount,
                "mode": u16(d, o + 4), "size": size, "iu": u32(d, o + 16),
                "isize": 64 if ext else 32,
                "xsize": 12 + (icount - 1) * 4 if icount else 0}

    def dir_blocks(self, nid):
        """(offset, length) of each directory block of NID."""
        i = self.inode(nid)
        nblocks = (i["size"] + 4095) // 4096
        for k in range(nblocks):
            length = min(4096, i["size"] - k * 4096)
            if i["layout"] == 2 and k == nblocks - 1:
                yield i["off"] + i["isize"] + i["xsize"], length
            else:
                yield i["iu"] * 4096 + k * 4096, length

    def entries(self, nid):
        """(name, nid, dirent offset) of every entry of directory NID."""
        out = []
        for base, length in self.dir_blocks(nid):
            n = u16(self.data, base + 8) // 12
            for k in range(n):
                e = base + 12 * k
                nameoff = u16(self.data, e + 8)
                end = u16(self.data, e + 20) if k + 1 < n else length
                name = bytes(self.data[base + nameoff: base + end]).split(b"\0")[0]
                out.append((name, struct.unpack_from("<Q", self.data, e)[0], e))
        return out

    def find(self, path):
        nid = self.root
        for comp in path.strip("/").split("/"):
            nid = next(n for name, n, _ in self.entries(nid) if name == comp.encode())
        return nid


def corruptions():
    """(name, bytes, expected message fragment or None) for damaged images."""
    base = open(RICH, "rb").read()
    out = []

    def mut(name, fn, msg=None):
        img = Image(base)
        fn(img)
        out.append((name, bytes(img.data), msg))

    for n in (0, 100, 1024, 1100, 4096, len(base) // 2, len(base) - 4096, len(base) - 1):
        out.append((f"truncated-{n}", base[:n], None))
    mut("header-magic", lambda i: i.data.__setitem__(0, i.data[0] ^ 1), "composefs")
    mut("header-version", lambda i: struct.pack_into("<I", i.data, 4, 2), "version")
    mut("erofs-magic", lambda i: i.data.__setitem__(1024, 0), "magic")
    mut("blkszbits", lambda i: sb_set(i.data, "blkszbits", 9), "block size")
    mut("incompat-device-table", lambda i: sb_set(i.data, "feature_incompat", 0x8),
        "device_table")
    mut("incompat-unknown", lambda i: sb_set(i.data, "feature_incompat", 1 << 30),
        "unknown")
    mut("sb-checksum", lambda i: sb_set(i.data, "feature_compat", sb_get(i.data, "feature_compat") | 1), "checksum")
    mut("meta-blkaddr", lambda i: sb_set(i.data, "meta_blkaddr", 0xffffff), None)
    mut("root-nid-beyond", lambda i: sb_set(i.data, "root_nid", 0xffff), "root")
    mut("root-nid-file", lambda i: sb_set(i.data, "root_nid", i.find("xattrs")),
        "not a directory")
    mut("root-nid-misaligned", lambda i: sb_set(i.data, "root_nid", i.root + 1))

    def dirent(name, val, field="nameoff", msg=None):
        def f(i):
            big = i.find("big")
            _, _, e = i.entries(big)[1 if field == "nid" else 0]
            if field == "nameoff":
                struct.pack_into("<H", i.data, e + 8, val)
            else:
                struct.pack_into("<Q", i.data, e, val)
        mut(name, f, msg)

    dirent("nameoff-zero", 0, msg="de[0].nameoff 0")
    dirent("nameoff-unaligned", 13, msg="de[0].nameoff 13")
    dirent("nameoff-past-block", 4095, msg="nameoff")
    dirent("nameoff-huge", 0xffff, msg="nameoff")
    dirent("dirent-nid-huge", 1 << 60, "nid", msg="beyond the image")

    def inode_field(name, path, off, fmt, val, msg=None):
        def f(i):
            struct.pack_into(fmt, i.data, i.inode(i.find(path))["off"] + off, val)
        mut(name, f, msg)

    inode_field("xattr-icount-huge", "xattrs", 2, "<H", 0xffff, "xattr area")
    inode_field("xattr-icount-small", "xattrs", 2, "<H", 1, "shared xattrs overrun")
    inode_field("layout-compressed", "inline/f5000", 0, "<H", (1 << 1) | 1, "compressed")
    inode_field("layout-unknown", "inline/f5000", 0, "<H", (7 << 1) | 1, "unknown data layout")
    inode_field("format-reserved-bits", "inline/f5000", 0, "<H", 0x8000 | (2 << 1) | 1,
                "i_format")
    inode_field("inline-size-crosses-block", "inline/f2047", 8, "<Q", 4000, "block boundary")
    inode_field("plain-size-beyond-image", "inline/f4096", 8, "<Q", 1 << 40, "beyond the image")
    inode_field("mode-bogus", "xattrs", 4, "<H", 0o170644, "bogus mode")
    inode_field("chunk-format-unknown", "ext-digest", 16, "<I", 0x40 | 5, "chunk format")
    inode_field("symlink-too-long", "sym", 8, "<Q", 5000, "symlink")
    inode_field("dir-size-huge", "big", 8, "<Q", 1 << 50, "nid")

    def shared_id(i):
        ino = i.inode(i.find("xattrs2"))
        assert i.data[ino["off"] + ino["isize"] + 4] > 0  # has shared xattrs
        struct.pack_into("<I", i.data, ino["off"] + ino["isize"] + 12, 0xfffffff0)
    mut("shared-xattr-id", shared_id, "xattr entry")

    def xattr_entry_len(i):
        ino = i.inode(i.find("xattrs"))
        shared = i.data[ino["off"] + ino["isize"] + 4]
        e = ino["off"] + ino["isize"] + 12 + 4 * shared
        struct.pack_into("<H", i.data, e + 2, 0xffff)  # value size
    mut("xattr-value-size", xattr_entry_len, "xattr entry")
    return out


CORRUPTIONS = corruptions()


@pytest.mark.parametrize("name,data,msg", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_image(tmp, name, data, msg):
    img = tmp / f"{name}.cfs"
    img.write_bytes(data)
    for cmd in ("dump", "ls", "objects"):
        p = info(cmd, img, check=False)
        err = p.stderr.decode("latin-1")
        assert p.returncode == 1, (cmd, p.returncode, err)
        assert p.stdout == b"", cmd  # nothing printed for a corrupt image
        assert err.count("\n") == 1 and str(img) in err, err
        assert not SUSPICIOUS.search(err), err
        if msg:
            assert msg in err, err


def test_dir_loop_does_not_hang(tmp):
    """A directory entry pointing back at the root is shown as a hard link
    (upstream semantics), not followed forever."""
    i = Image(open(RICH, "rb").read())
    path = "/".join(f"d{k}" for k in range(30))
    deepest = i.find(path)
    for name, nid, off in i.entries(deepest):
        if name not in (b".", b".."):
            struct.pack_into("<Q", i.data, off, i.root)
    img = tmp / "loop.cfs"
    img.write_bytes(bytes(i.data))
    p = info("dump", img, timeout=60)
    # The entry keeps its name but is now the root: a hard link to "" (the
    # root's path), with the root's attributes.
    line = [l for l in p.stdout.splitlines() if l.startswith(b"/" + path.encode() + b"/L")]
    assert len(line) == 1 and b" @40755 " in line[0], line
    assert info("ls", img, timeout=60).returncode == 0
    assert run([tool("test-image"), "--list", img], timeout=60).returncode == 0


# --------------------------------------------------------------------------
# The raw reader view against the kernel's EROFS mount of the same image.

def kernel_listing(mnt):
    lines = []
    for dirpath, dirnames, filenames in os.walk(mnt):
        names = [""] if dirpath == mnt else []
        for name in names + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            rel = b"/" + os.fsencode(os.path.relpath(p, mnt)) if name else b"/"
            st = os.lstat(p)
            target = os.fsencode(os.readlink(p)).hex() if stat.S_ISLNK(st.st_mode) else "-"
            content = "-"
            if stat.S_ISREG(st.st_mode) and st.st_size <= 1 << 43:
                with open(p, "rb") as f:
                    head = f.read(1 << 20)
                    f.seek(max(st.st_size - 4096, 0))
                    tail = f.read()
                content = hashlib.sha256(head).hexdigest()[:16] + "/" + \
                    hashlib.sha256(tail).hexdigest()[:16]
            xs = []
            for x in sorted(os.listxattr(p, follow_symlinks=False)):
                try:
                    v = os.getxattr(p, x, follow_symlinks=False).hex()
                except OSError:
                    v = "?"  # the kernel refuses a malformed ACL or capability
                if x.startswith("system.posix_acl_"):
                    v = "?"  # the kernel parses and re-encodes ACLs
                xs.append(f"{x}={v}")
            rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
            lines.append("\t".join([rel.hex(), str(st.st_ino), "%o" % st.st_mode, str(st.st_nlink),
                                    str(st.st_uid), str(st.st_gid), str(rdev), str(st.st_size),
                                    f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9}",
                                    target, content, ",".join(xs)]))
    return sorted(lines)


@needs_root
@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_raw_view_matches_kernel_erofs(image):
    compare_with_kernel(image)


def compare_with_kernel(image):
    ours = sorted(run([tool("test-image"), "--list", image]).stdout.decode().splitlines())
    mnt = tempfile.mkdtemp(prefix="cfs-erofs-")
    try:
        p = run(["mount", "-t", "erofs", "-o", "loop,ro", image, mnt], check=False)
        if p.returncode != 0:
            pytest.skip(f"cannot mount erofs: {p.stderr!r}")
        try:
            theirs = kernel_listing(mnt)
        finally:
            run(["umount", mnt])
    finally:
        os.rmdir(mnt)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        fa, fb = a.split("\t"), b.split("\t")
        # Values the kernel would not show as stored are compared by name.
        xa = dict(x.split("=", 1) for x in fa[-1].split(",") if x)
        xb = dict(x.split("=", 1) for x in fb[-1].split(",") if x)
        for name, v in xb.items():
            if v == "?" and name in xa:
                xa[name] = "?"
        assert fa[:-1] == fb[:-1] and xa == xb, f"\nreader: {a}\nkernel: {b}"


def make_tree(root):
    """A tree with what erofs-utils lays out in different ways: inline and
    plain files, multi-block directories, shared and inline xattrs, hard
    links, long symlinks, devices."""
    rnd = random.Random(7)
    os.makedirs(root)
    for size in (0, 1, 100, 2047, 2048, 4095, 4096, 4097, 10000, 100000, (1 << 20) + 1):
        with open(os.path.join(root, f"f{size}"), "wb") as f:
            f.write(bytes(rnd.randrange(256) for _ in range(min(size, 5000))) * (size // 5000 + 1))
            f.truncate(size)
    big = os.path.join(root, "big")
    os.makedirs(big)
    for i in range(1500):
        p = os.path.join(big, "name-%05d-%s" % (i, "z" * (i % 50)))
        with open(p, "wb") as f:
            f.write(b"x" * (i % 7))
        os.setxattr(p, "user.common", b"shared value")
        if i % 10 == 0:
            os.setxattr(p, "user.own", str(i).encode())
    deep = root
    for k in range(20):
        deep = os.path.join(deep, f"level{k}")
        os.makedirs(deep)
    os.symlink("t" * 1000, os.path.join(deep, "long-link"))
    os.symlink("../f1", os.path.join(root, "short-link"))
    os.link(os.path.join(root, "f100"), os.path.join(deep, "hard"))
    os.mkfifo(os.path.join(root, "fifo"))
    if is_root():
        os.mknod(os.path.join(root, "chr"), 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(os.path.join(root, "blk"), 0o600 | stat.S_IFBLK, os.makedev(259, 70000))
        os.setxattr(os.path.join(root, "f1"), "trusted.t", b"tv")
    os.setxattr(os.path.join(root, "f4096"), "user.many", b"v" * 200)


MKFS_VARIANTS = {
    "default": [],
    "compact": ["-Eforce-inode-compact"],
    "extended": ["-Eforce-inode-extended"],
    "noinline": ["-Enoinline_data"],
    "chunks-4k": ["--chunksize=4096"],
    "chunks-64k-indexes": ["--chunksize=65536", "-Eforce-chunk-indexes"],
    "shared-xattrs": ["-x1"],
}


def erofs_as_composefs(src, dst):
    """erofs-utils leaves block 0 before the superblock empty: put a
    composefs header there."""
    data = bytearray(open(src, "rb").read())
    assert data[:32] == bytes(32)
    struct.pack_into("<IIII", data, 0, 0xd078629a, 1, 0, 1)
    open(dst, "wb").write(data)


@needs_root
@pytest.mark.skipif(not shutil.which("mkfs.erofs"), reason="needs mkfs.erofs")
@pytest.mark.parametrize("variant", sorted(MKFS_VARIANTS))
def test_raw_view_of_mkfs_erofs_images(tmp, variant):
    """Images from another writer (erofs-utils) use layouts upstream
    composefs never writes (plain data blocks, chunk tables with real
    addresses, 8-byte chunk indexes, superblock checksums); the reader must
    still see exactly what the kernel sees."""
    tree = str(tmp / "tree")
    make_tree(tree)
    raw = str(tmp / "raw.erofs")
    run(["mkfs.erofs", "--quiet", *MKFS_VARIANTS[variant], raw, tree])
    img = str(tmp / "img.cfs")
    erofs_as_composefs(raw, img)
    compare_with_kernel(img)


@pytest.mark.skipif(not shutil.which("mkfs.erofs"), reason="needs mkfs.erofs")
def test_compressed_erofs_is_refused(tmp):
    tree = str(tmp / "tree")
    make_tree(tree)
    raw = str(tmp / "raw.erofs")
    run(["mkfs.erofs", "--quiet", "-zlz4", raw, tree])
    img = str(tmp / "img.cfs")
    erofs_as_composefs(raw, img)
    p = info("ls", img, check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"" and img in err
    assert "compressed" in err or "unsupported EROFS incompatible features" in err, err


@pytest.mark.skipif(not shutil.which("mkfs.erofs"), reason="needs mkfs.erofs")
def test_superblock_checksum_is_verified(tmp):
    """erofs-utils writes a crc32c of the superblock block: it is accepted as
    written and a change to any covered byte (here the volume name, which
    nothing else checks) is refused."""
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"data")
    raw = str(tmp / "raw.erofs")
    run(["mkfs.erofs", "--quiet", raw, str(tree)])
    img = str(tmp / "img.cfs")
    erofs_as_composefs(raw, img)
    data = bytearray(open(img, "rb").read())
    assert sb_get(data, "feature_compat") & COMPAT_SB_CHKSUM
    assert info("ls", img).stdout == b"/f\n"
    data[sb_offset("volume_name")] ^= 0x20
    open(img, "wb").write(data)
    p = info("ls", img, check=False)
    assert p.returncode == 1 and b"checksum" in p.stderr


def rename_in_place(img, start, length, old, new):
    """Replace the bytes OLD by NEW (same length) inside [start, start+length)."""
    assert len(old) == len(new)
    k = bytes(img.data[start:start + length]).find(old)
    assert k >= 0
    img.data[start + k:start + k + len(old)] = new


def upstream_set_xattrs(pairs):
    """The xattr list upstream's lcfs_node_set_xattr() leaves after setting
    PAIRS in turn: a name set again replaces its entry, whose slot the
    current last entry takes, and is appended."""
    xattrs = []
    for name, value in pairs:
        for k, (m, _) in enumerate(xattrs):
            if m == name:
                xattrs[k] = xattrs[-1]
                xattrs.pop()
                break
        xattrs.append((name, value))
    return xattrs


def test_duplicate_xattr_names_follow_upstream(tmp):
    """Two xattrs of one inode with the same name: upstream's reader replaces
    the first (moving its last xattr into the freed slot) and appends the
    second; the dump must show that order."""
    i = Image(open(RICH, "rb").read())
    ino = i.inode(i.find("xattrs"))
    rename_in_place(i, ino["off"] + ino["isize"], ino["xsize"], b"v05", b"v03")
    img = tmp / "dupx.cfs"
    img.write_bytes(bytes(i.data))

    line = [l for l in dump_text(RICH).decode("latin-1").splitlines() if l.startswith("/xattrs ")][0]
    fields = line.split(" ")
    renamed = []
    for x in fields[11:]:
        name, value = x.split("=", 1)
        renamed.append(("user.v03" if name == "user.v05" else name, value))
    xattrs = upstream_set_xattrs(renamed)
    want = " ".join(fields[:11] + [f"{n}={v}" for n, v in xattrs])
    got = [l for l in info("dump", img).stdout.decode("latin-1").splitlines()
           if l.startswith("/xattrs ")]
    assert got == [want]


def test_many_duplicate_xattr_names_follow_upstream(tmp):
    """The same with hundreds of xattrs on one inode (the printer looks
    names up in a hash table once an inode has many) and many names made
    duplicates, each of which moves the current last xattr."""
    n = 600
    names = [f"user.a{k:04d}" for k in range(n)]
    dump = tmp / "many.dump"
    dump.write_text("/ 0 40755 2 0 0 0 0.0 - - -\n/f 0 100644 1 0 0 0 0.0 - - - "
                    + " ".join(f"{x}=v{k}" for k, x in enumerate(names)) + "\n")
    img = tmp / "many.cfs"
    run([tool("mkcomposefs"), "--from-file", dump, img])
    data = bytearray(img.read_bytes())
    rng = random.Random(7)
    renames = {}
    for k in rng.sample(range(n), 150):
        renames[names[k]] = names[rng.randrange(n)]
    # the image keeps each inode's xattrs sorted by name, as the dump lists them
    order, pos = [], data.find(b"a0000")
    assert pos > 0 and data.find(b"a0000", pos + 1) < 0
    for k, x in enumerate(names):
        new = renames.get(x, x)
        pos = data.find(x[5:].encode(), pos)
        assert pos > 0
        data[pos:pos + 5] = new[5:].encode()
        order.append((new, f"v{k}"))
    img.write_bytes(bytes(data))
    xattrs = upstream_set_xattrs(order)
    got = [l for l in info("dump", img).stdout.decode().splitlines() if l.startswith("/f ")]
    assert len(got) == 1
    assert got[0].split(" ")[11:] == [f"{m}={v}" for m, v in xattrs]
    assert len(xattrs) < n - 50  # many names really collided


def test_duplicate_names_in_a_directory_are_refused(tmp):
    i = Image(open(RICH, "rb").read())
    d = i.find("inline")
    for start, length in i.dir_blocks(d):
        if b"f2048" in bytes(i.data[start:start + length]):
            rename_in_place(i, start, length, b"f2048", b"f2047")
    img = tmp / "dupn.cfs"
    img.write_bytes(bytes(i.data))
    p = info("dump", img, check=False)
    assert p.returncode == 1 and p.stdout == b"" and b"duplicate name" in p.stderr


@needs_root
def test_image_on_a_block_device():
    """An image may also be read from a block device (its size comes from
    BLKGETSIZE64, not st_size)."""
    p = run(["losetup", "--find", "--show", "--read-only", RICH], check=False)
    if p.returncode != 0:
        pytest.skip(f"no loop device: {p.stderr!r}")
    dev = p.stdout.decode().strip()
    try:
        assert info("dump", dev).stdout == dump_text(RICH)
    finally:
        run(["losetup", "-d", dev])
