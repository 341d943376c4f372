# SPDX-License-Identifier: LGPL-2.1-or-later
"""The verification engine (cas/) through bench/cas-tool and `composefs-info
verify`: digests equal Debian's `fsverity digest`, every corrupt byte is
caught (data and persisted tree), hostile paths are refused, the kernel
method (with a stand-in for the ioctl) and both I/O backends are used."""
import ctypes
import errno
import hashlib
import json
import os
import pty
import shutil
import subprocess
import tempfile

import pytest

from conftest import fuse_mount, run, tool

BS = 4096


def fsverity_digest(path):
    return run(["fsverity", "digest", "--compact", path]).stdout.decode().strip()


def put(store, data):
    """Store DATA as an object; return (redirect, digest, path)."""
    os.makedirs(store, exist_ok=True)
    tmp = os.path.join(store, ".new")
    with open(tmp, "wb") as f:
        f.write(data)
    d = fsverity_digest(tmp)
    os.makedirs(os.path.join(store, d[:2]), exist_ok=True)
    path = os.path.join(store, d[:2], d[2:])
    os.rename(tmp, path)
    return f"/{d[:2]}/{d[2:]}", d, path


def cas_read(store, redirect, digest, size, ranges=(), opts=(), stdin=None):
    """Run cas-tool read; return (open_result, method, io, reads, stats)."""
    p = run([tool("cas-tool"), "read", *opts, store, redirect or "-", digest or "-", size,
             *[f"{o}:{n}" for o, n in ranges]], input=stdin, check=False)
    assert p.returncode in (0, 1), p.stderr  # 1: the store could not be opened
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    head = lines[0]
    if "cas_open" in head:
        return head["cas_open"], None, None, [], {}
    return (head["open"], head.get("method"), head["io"],
            [x for x in lines if "off" in x], lines[-1]["stats"])


def sha(b):
    return hashlib.sha256(b).hexdigest()


def pattern(n, seed=1):
    return bytes((i * 7 + seed * (i >> 12) + 3) & 255 for i in range(n))


def flip(path, off, mask=0x40):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ mask]))


IO = ["--io=uring", "--io=pread"]


def need_io(io):
    if io == "--io=uring" and not io_uring_expected():
        pytest.skip("io_uring not built in or refused by this kernel")


@pytest.mark.parametrize("size", [0, 1, 4096, 4097, 1024 * 1024 + 1, 300000])
def test_digest_matches_fsverity(tmp, size):
    data = os.urandom(size)
    redirect, d, path = put(str(tmp / "s"), data)
    out = run([tool("cas-tool"), "digest", path]).stdout.decode().split()[0]
    assert out == d
    # The tree built from the data must give that digest (open succeeds) and
    # verify every block on read.
    r, method, _, reads, _ = cas_read(str(tmp / "s"), redirect, d, size)
    assert (r, method) == (0, "userspace")
    assert reads[0]["res"] == size and reads[0]["sha256"] == sha(data)


@pytest.fixture
def sparse_dir(tmp):
    """Holes read fast on tmpfs and cost no memory there; on ext4 the
    fsverity tool takes three times as long over a hole."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="cfs-sparse-", dir="/dev/shm")
        yield d
        shutil.rmtree(d)
    else:
        yield str(tmp)


def test_digest_multi_gib_sparse(tmp, sparse_dir):
    store = os.path.join(sparse_dir, "s")
    os.mkdir(store)
    f = os.path.join(store, "sparse")
    size = 4 * 1024 ** 3 + 4097  # beyond 2^32 bytes and 2^20 blocks: 3 tree levels
    pokes = {0: 0x5a, 123456789: 0x01, 3 * 1024 ** 3 + 5: 0x77, size - 1: 0xff}
    with open(f, "wb") as fh:
        fh.truncate(size)
        for off, b in pokes.items():
            fh.seek(off)
            fh.write(bytes([b]))
    # The fsverity tool and our tree build (the engine's code path, which
    # also persists the tree) run side by side on the 2 cores.
    cache = str(tmp / "cache")  # 32 MiB of leaves: on disk, not in a small /dev/shm
    tool_p = subprocess.Popen(["fsverity", "digest", "--compact", f], stdout=subprocess.PIPE)
    ours = run([tool("cas-tool"), "tree-digest", f"--tree-cache={cache}", f]).stdout.decode().split()[0]
    d = tool_p.communicate()[0].decode().strip()
    assert tool_p.returncode == 0
    assert ours == d
    os.makedirs(os.path.join(store, d[:2]))
    os.rename(f, os.path.join(store, d[:2], d[2:]))
    ranges = [(0, 1), (123456789, 1), (3 * 1024 ** 3, BS + 10), (size - 1, 5), (size - 4097, 4097)]
    # Opening checks the persisted tree (leaves -> root -> digest) and every
    # read is verified against it.
    r, method, _, reads, st = cas_read(store, None, d, size, ranges, opts=[f"--tree-cache={cache}"])
    assert st["trees_from_disk"] == 1 and st["trees_built"] == 0
    assert (r, method) == (0, "userspace")
    assert [x["res"] for x in reads] == [1, 1, BS + 10, 1, 4097]
    assert reads[0]["sha256"] == sha(b"\x5a")
    assert reads[2]["sha256"] == sha(b"\0" * 5 + b"\x77" + b"\0" * (BS + 4))
    assert reads[4]["sha256"] == sha(b"\0" * 4096 + b"\xff")


SIZE = 50 * BS + 123
SPOTS = {"first": 7, "middle": 25 * BS + 99, "last-partial": SIZE - 1}


def block_ranges():
    return [(b, BS) for b in range(0, SIZE, BS)]


@pytest.mark.parametrize("io", IO)
@pytest.mark.parametrize("where", sorted(SPOTS))
def test_flipped_byte_with_persisted_tree(tmp, io, where):
    """A trusted tree (from the cache) and a corrupt object: only the block
    with the flipped byte is refused."""
    need_io(io)
    data = pattern(SIZE)
    store, cache = str(tmp / "s"), str(tmp / "cache")
    redirect, d, path = put(store, data)
    opts = [io, f"--tree-cache={cache}", "--min-persist=1"]
    r, _, _, _, st = cas_read(store, redirect, d, SIZE, opts=opts)
    assert r == 0 and st["trees_written"] == 1
    assert os.path.exists(os.path.join(cache, d))
    flip(path, SPOTS[where])
    r, method, iob, reads, st = cas_read(store, redirect, d, SIZE, block_ranges(), opts)
    assert (r, method) == (0, "userspace")
    assert iob == ("io_uring" if io == "--io=uring" else "pread")
    assert st["trees_from_disk"] == 1 and st["trees_built"] == 0
    bad = SPOTS[where] // BS * BS
    for x in reads:
        if x["off"] == bad:
            assert x["res"] == -errno.EIO
        else:
            assert x["res"] == min(BS, SIZE - x["off"])
            assert x["sha256"] == sha(data[x["off"]:x["off"] + BS])
    assert st["blocks_failed"] == 1
    # Without a trusted tree the object does not match its digest at all:
    # the open costs nothing, every read fails.
    r, _, _, reads, st = cas_read(store, redirect, d, SIZE, block_ranges())
    assert r == 0 and reads and all(x["res"] == -errno.EIO for x in reads)
    assert st["trees_built"] == 0


@pytest.mark.parametrize("io", IO)
def test_flipped_byte_while_open(tmp, io):
    need_io(io)
    data = pattern(SIZE, 2)
    store = str(tmp / "s")
    redirect, d, path = put(store, data)
    p = subprocess.Popen([tool("cas-tool"), "read", io, "--check-all", "--wait", store, redirect, d,
                          str(SIZE),
                          *[f"{o}:{n}" for o, n in block_ranges()], f"0:{SIZE}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = json.loads(p.stdout.readline())
    assert first["open"] == 0
    flip(path, SPOTS["middle"])
    out, _ = p.communicate("go\n", timeout=60)
    assert p.returncode == 0
    reads = [json.loads(x) for x in out.splitlines() if '"off"' in x]
    for x in reads[:-1]:
        if x["off"] == SPOTS["middle"] // BS * BS:
            assert x["res"] == -errno.EIO
        else:
            assert x["sha256"] == sha(data[x["off"]:x["off"] + BS])
    assert reads[-1]["res"] == -errno.EIO  # a read covering it fails whole


@pytest.mark.parametrize("where", ["magic", "digest", "first-leaf", "last-leaf"])
def test_flipped_byte_in_tree_cache_file(tmp, where):
    size = 700 * BS + 5  # 6 leaf blocks
    data = pattern(size, 3)
    store, cache = str(tmp / "s"), str(tmp / "cache")
    redirect, d, path = put(store, data)
    opts = [f"--tree-cache={cache}", "--min-persist=1"]
    assert cas_read(store, redirect, d, size, opts=opts)[0] == 0
    cfile = os.path.join(cache, d)
    assert os.path.getsize(cfile) == 64 + 6 * BS
    off = {"magic": 0, "digest": 40, "first-leaf": 64 + 3, "last-leaf": 64 + 6 * BS - 1}[where]
    flip(cfile, off, 0x01)
    r, _, _, reads, st = cas_read(store, redirect, d, size, opts=opts)
    assert r == 0
    assert st["trees_rejected"] == 1 and st["trees_built"] == 1 and st["trees_written"] == 1
    assert reads[0]["sha256"] == sha(data)
    # rebuilt and rewritten (atomically: no temporary file left behind),
    # trusted again next time
    assert os.listdir(cache) == [d]
    r, _, _, _, st = cas_read(store, redirect, d, size, opts=opts)
    assert r == 0 and st["trees_from_disk"] == 1 and st["trees_built"] == 0


def test_truncated_and_extended_objects(tmp):
    data = pattern(SIZE, 4)
    store = str(tmp / "s")
    redirect, d, path = put(store, data)
    os.truncate(path, SIZE - 1)
    assert cas_read(store, redirect, d, SIZE)[0] == -errno.EIO
    os.truncate(path, SIZE + 1)
    assert cas_read(store, redirect, d, SIZE)[0] == -errno.EIO
    with open(path, "r+b") as f:
        f.truncate(SIZE)
        f.seek(SIZE - 1)
        f.write(data[-1:])
    assert cas_read(store, redirect, d, SIZE)[0] == 0


def test_hostile_redirects(tmp):
    store = tmp / "s"
    data = pattern(5000)
    redirect, d, path = put(str(store), data)
    for red in ["/../../etc/passwd", "../etc/passwd", "/ab/../../../etc/passwd", "//etc/passwd"]:
        assert cas_read(str(store), red, None, os.path.getsize("/etc/passwd"))[0] == -errno.EPERM
    # an absolute symlink inside the store
    os.symlink("/etc", store / "zz")
    assert cas_read(str(store), "/zz/passwd", None, os.path.getsize("/etc/passwd"))[0] == -errno.EPERM
    # a symlinked object, even one pointing at a good object
    os.symlink(path, store / d[:2] / "link")
    assert cas_read(str(store), f"/{d[:2]}/link", None, 5000)[0] == -errno.EPERM
    # a symlinked directory inside the store
    os.symlink(d[:2], store / "yy")
    assert cas_read(str(store), f"/yy/{d[2:]}", None, 5000)[0] == -errno.EPERM
    # redirect and digest disagree
    other = ("0" if d[0] != "0" else "1") + d[1:]
    assert cas_read(str(store), redirect, other, 5000)[0] == -errno.EINVAL
    # the good object still opens
    assert cas_read(str(store), redirect, d, 5000)[:2] == (0, "userspace")


def test_kernel_method_with_fake_measure(tmp):
    data = pattern(3 * BS + 7, 5)
    store = str(tmp / "s")
    redirect, d, path = put(store, data)
    wrong = ("f" if d[-1] != "f" else "e").join([d[:-1], ""])
    r, method, _, reads, st = cas_read(store, redirect, d, len(data), opts=[f"--fake-measure={d}"])
    assert (r, method) == (0, "kernel")
    assert reads[0]["sha256"] == sha(data) and st["trees_built"] == 0
    assert cas_read(store, redirect, d, len(data), opts=[f"--fake-measure={wrong}"])[0] == -errno.EIO
    r, method, *_ = cas_read(store, redirect, d, len(data), opts=["--fake-measure=enodata"])
    assert (r, method) == (0, "userspace")
    r, *_ = cas_read(store, redirect, d, len(data), opts=["--fake-measure=enodata", "--method=kernel"])
    assert r == -errno.ENODATA
    r, method, *_ = cas_read(store, redirect, d, len(data), opts=[f"--fake-measure={wrong}",
                                                                 "--method=userspace"])
    assert (r, method) == (0, "userspace")
    # the real ioctl: this filesystem has no fs-verity on the file
    r, method, *_ = cas_read(store, redirect, d, len(data))
    assert (r, method) == (0, "userspace")


def test_no_digest_policy(tmp):
    data = pattern(9000, 6)
    store = str(tmp / "s")
    redirect, d, path = put(store, data)
    r, method, _, reads, _ = cas_read(store, redirect, None, 9000)
    assert (r, method) == (0, "off") and reads[0]["sha256"] == sha(data)
    assert cas_read(store, redirect, None, 9000, opts=["--require-digest"])[0] == -errno.ENOKEY
    r, method, *_ = cas_read(store, redirect, d, 9000, opts=["--no-verify"])
    assert (r, method) == (0, "off")


def kernel_allows_io_uring():
    """Ask the kernel directly (io_uring_setup, syscall 425 on every
    architecture), independently of the code under test."""
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(425, 4, params)
    if fd < 0:
        return False
    os.close(fd)
    return True


def io_uring_expected():
    built = json.loads(run([tool("cas-tool"), "features"]).stdout)["io_uring_built"]
    return built and kernel_allows_io_uring()


@pytest.mark.parametrize("deny", ["enosys", "eperm"])
def test_io_uring_refused_falls_back_to_pread(tmp, deny):
    data = pattern(200 * BS, 7)
    store = str(tmp / "s")
    redirect, d, path = put(store, data)
    r, _, iob, reads, _ = cas_read(store, redirect, d, len(data), [(0, len(data))])
    assert r == 0 and reads[0]["sha256"] == sha(data)
    assert iob == ("io_uring" if io_uring_expected() else "pread")
    r, _, iob, reads, _ = cas_read(store, redirect, d, len(data), [(0, len(data))],
                                   opts=[f"--deny-io-uring={deny}"])
    assert (r, iob) == (0, "pread") and reads[0]["sha256"] == sha(data)
    # forcing io_uring where it is refused fails instead of falling back
    r, *_ = cas_read(store, redirect, d, len(data), opts=[f"--deny-io-uring={deny}", "--io=uring"])
    if io_uring_expected():
        assert r == (-errno.ENOSYS if deny == "enosys" else -errno.EPERM)
    else:
        assert r < 0


# ------------------------------------------------------- composefs-info verify

def make_image(tmp):
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    files = {"big": os.urandom(600 * 1024 + 3), "d/small": os.urandom(4097),
             "d/mid": os.urandom(300000), "d/dup": None, "tiny": b"hi\n"}
    files["d/dup"] = files["big"]
    for name, data in files.items():
        (src / name).write_bytes(data)
    os.link(src / "d/small", src / "d/small-link")
    objs, img = tmp / "objs", tmp / "img.cfs"
    run([tool("mkcomposefs"), f"--digest-store={objs}", src, img])
    return files, objs, img


def info_verify(img, objs, *opts, env=None):
    return run([tool("composefs-info"), f"--basedir={objs}", *opts, "verify", img], check=False,
               env=env)


def test_verify_cli(tmp):
    files, objs, img = make_image(tmp)
    cache = tmp / "cache"
    p = info_verify(img, objs, f"--tree-cache={cache}")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    assert b"3 ok, 0 missing, 0 corrupt" in p.stderr
    assert b"\r" not in p.stderr  # no progress line when stderr is not a terminal
    digests = {fsverity_digest(str(tmp / "src" / n)) for n in ("big", "d/mid")}
    # mkcomposefs stored the trees of objects over 128 KiB beside them:
    # verify checked them, and had nothing to add
    assert stored_trees(objs) == digests
    assert not cache.exists() or os.listdir(cache) == []
    # without them, verify puts them back where they belong
    shutil.rmtree(objs / ".cfs-trees")
    p = info_verify(img, objs, f"--tree-cache={cache}")
    assert p.returncode == 0, p.stderr
    assert stored_trees(objs) == digests
    # corrupt one object, remove another
    dmid = fsverity_digest(str(tmp / "src/d/mid"))
    dsmall = fsverity_digest(str(tmp / "src/d/small"))
    flip(str(objs / dmid[:2] / dmid[2:]), 150000)
    os.unlink(objs / dsmall[:2] / dsmall[2:])
    p = info_verify(img, objs, f"--tree-cache={cache}", "--threads=2")
    assert p.returncode == 1
    lines = sorted(p.stdout.decode().splitlines())
    assert lines == sorted([f"corrupt /d/mid {dmid[:2]}/{dmid[2:]}",
                            f"missing /d/small {dsmall[:2]}/{dsmall[2:]}",
                            f"missing /d/small-link {dsmall[:2]}/{dsmall[2:]}"])
    # the same result without any tree cache (full re-hash)
    p2 = info_verify(img, objs, "--tree-cache=")
    assert p2.returncode == 1 and sorted(p2.stdout.decode().splitlines()) == lines


def stored_trees(objs):
    """Digests of the trees stored beside the objects."""
    top = objs / ".cfs-trees"
    return {d.name + f.name for d in top.iterdir() for f in d.iterdir()} if top.exists() else set()


def test_verify_default_cache_dir(tmp):
    files, objs, img = make_image(tmp)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "xdg"))
    # a store it cannot write to (a read-only bind mount): the trees go to
    # the per-user cache
    shutil.rmtree(objs / ".cfs-trees")
    ro = tmp / "ro"
    ro.mkdir()
    run(["mount", "--bind", str(objs), str(ro)])
    try:
        run(["mount", "-o", "remount,bind,ro", str(ro)])
        p = info_verify(img, ro, env=env)
    finally:
        run(["umount", str(ro)])
    assert p.returncode == 0, p.stderr
    assert not (objs / ".cfs-trees").exists()
    assert len(os.listdir(tmp / "xdg" / "composefs-fuse")) == 2
    # a store path that does not exist is an error, not "all fine"
    p = info_verify(img, tmp / "nope", env=env)
    assert p.returncode != 0 and b"nope" in p.stderr


def test_verify_refuses_cache_inside_store(tmp):
    files, objs, img = make_image(tmp)
    p = info_verify(img, objs, f"--tree-cache={objs}/cache")
    assert p.returncode != 0
    assert f"--tree-cache '{objs}/cache': inside an object store directory".encode() in p.stderr
    assert not os.path.exists(objs / "cache")  # nothing created in the store
    # any other refusal says its own reason, and blames the cache, not the store
    p = info_verify(img, objs, f"--tree-cache={tmp}/new/../cache")
    assert p.returncode != 0
    assert b"'.' or '..'" in p.stderr and b"object store" not in p.stderr, p.stderr


def test_verify_options_as_getopt_reads_them(tmp):
    """--thread=N and --tree-c=DIR (abbreviations getopt accepts) mean what
    the full names mean: verify used to look for the full names in argv."""
    files, objs, img = make_image(tmp)
    p = info_verify(img, objs, "--thread=1000")
    assert p.returncode != 0 and b"invalid --threads '1000'" in p.stderr, p.stderr
    shutil.rmtree(objs / ".cfs-trees")
    ro = tmp / "ro"                      # a store it cannot write: trees go to the cache
    ro.mkdir()
    run(["mount", "--bind", str(objs), str(ro)])
    try:
        run(["mount", "-o", "remount,bind,ro", str(ro)])
        p = info_verify(img, ro, f"--tree-c={tmp / 'abbrev'}", "--thread", "1")
    finally:
        run(["umount", str(ro)])
    assert p.returncode == 0, p.stderr
    assert len(os.listdir(tmp / "abbrev")) == 2


def test_verify_progress_on_a_terminal(tmp):
    files, objs, img = make_image(tmp)
    master, slave = pty.openpty()
    try:
        p = subprocess.run([tool("composefs-info"), f"--basedir={objs}", "--tree-cache=", "verify",
                            str(img)], stdout=subprocess.PIPE, stderr=slave, timeout=60)
        os.close(slave)
        slave = -1
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0
    assert b"\rverify: " in err and b"/3 objects" in err
    assert b"3 ok" in err


def test_basedir_lists_read_alike(tmp):
    """Store lists are read one way by every tool: an empty name is refused
    by missing-objects, verify and the daemon alike (A::A used to pass one
    and fail the other), and a store whose own name has a ':' is that one
    directory for all of them (upstream's tools take one directory)."""
    files, objs, img = make_image(tmp)
    spec = f"{objs}::{objs}"
    for cmd in ("missing-objects", "verify"):
        p = run([tool("composefs-info"), f"--basedir={spec}", cmd, img], check=False)
        assert p.returncode != 0 and b"empty directory name" in p.stderr, (cmd, p.stderr)
    mnt = tmp / "mnt"
    mnt.mkdir()
    p = run([tool("composefs-fuse"), "-f", "-o", f"basedir={spec}", img, mnt], check=False,
            timeout=30)
    assert p.returncode != 0 and b"empty directory name" in p.stderr, p.stderr
    assert not os.path.ismount(mnt)

    colon = tmp / "st:ore"
    shutil.copytree(objs, colon)
    for cmd in ("missing-objects", "verify"):
        p = run([tool("composefs-info"), f"--basedir={colon}", cmd, img], check=False)
        assert p.returncode == 0 and p.stdout == b"", (cmd, p.stderr)
    with fuse_mount(img, basedir=str(colon), options=["passthrough=off"]) as (fmnt, proc):
        with open(os.path.join(fmnt, "big"), "rb") as f:
            assert f.read() == files["big"]
