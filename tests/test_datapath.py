# SPDX-License-Identifier: LGPL-2.1-or-later
"""The verified data path, counted: no OPEN for daemon-served mounts, each
byte of an object read from the store and hashed once, trees stored beside
the objects at import and checked before use, per-block failures after the
page cache is dropped, and file descriptors kept within RLIMIT_NOFILE.
Real images built by mkcomposefs, real FUSE mounts; the daemon's own
counters (stats_file, SIGUSR1) say what reached it."""
import os
import random
import resource
import shutil
import signal
import time

import pytest

from conftest import flip_byte, fuse_mount, read_stats, run, tool

BS = 4096


def _w(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _build(src, out):
    img = os.path.join(out, "image.cfs")
    objs = os.path.join(out, "objects")
    run([tool("mkcomposefs"), f"--digest-store={objs}", src, img])
    return img, objs


def _obj(objs, data_path):
    d = run(["fsverity", "digest", "--compact", data_path]).stdout.decode().strip()
    return d, os.path.join(objs, d[:2], d[2:]), os.path.join(objs, ".cfs-trees", d[:2], d[2:])


_stats = read_stats


def _snap(proc, path):
    """Counters now: SIGUSR1 makes the daemon write the stats file."""
    if os.path.exists(path):
        os.unlink(path)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                s = _stats(path)
                if "cas_idle_objects" in s:   # written completely
                    return s
            except ValueError:
                pass
        time.sleep(0.02)
    raise AssertionError("no stats from the daemon")


def _pushed(proc, path):
    """Counters once every verified object queued for the page cache is in
    it: over io_uring a pusher thread stores them after the replies (over
    /dev/fuse it is done before each reply, and nothing is pending)."""
    deadline = time.monotonic() + 20
    while True:
        s = _snap(proc, path)
        if s["push_pending_bytes"] == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def _drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _flip(path, off):
    flip_byte(path, off, 0x40)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("dp"))
    src = os.path.join(base, "src")
    rnd = random.Random(8)
    files = {}
    os.makedirs(os.path.join(src, "d"))
    for i in range(40):
        files[f"d/f{i:02d}"] = rnd.randbytes(100 + i * 5000)
    files["mid"] = rnd.randbytes(3 << 20)           # several READs, kept whole
    files["big"] = rnd.randbytes(20 << 20)          # larger than what is kept whole
    files["tiny"] = b"inline\n"
    for name, data in files.items():
        _w(os.path.join(src, name), data)
    img, objs = _build(src, base)
    return src, img, objs, files


def _read_all(mnt, files):
    for name, data in files.items():
        with open(os.path.join(mnt, name), "rb") as f:
            assert f.read() == data, name


def test_second_pass_sends_no_open_and_builds_no_tree(tree, tmp_path):
    src, img, objs, files = tree
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=[f"stats_file={stats}", "tree_cache=none"]) as (mnt, proc):
        _read_all(mnt, files)
        first = _pushed(proc, stats)
        _read_all(mnt, files)
        second = _snap(proc, stats)
        _drop_caches()              # a third pass reaches the daemon again ...
        _read_all(mnt, files)
        third = _snap(proc, stats)
    assert first["open_mode"] == "no-open", first
    assert "open mode: no-open" in proc.stderr_text
    # the first OPEN is answered ENOSYS; the kernel sends none after it
    assert first["opens"] == 1, first
    for k in ("opens", "cas_trees_built", "cas_objects_opened"):
        assert second[k] == first[k], (k, first, second)
    # The data comes from the page cache.  Not always every page: this
    # machine's kernel reclaims a little page cache all the time (a few MiB
    # a minute with 23 GiB free), so a pass now and then sends a few READs,
    # which read and verify those blocks again (about 240 READs the first).
    assert second["reads"] - first["reads"] <= 32, (first, second)
    assert second["cas_bytes_read"] - first["cas_bytes_read"] <= 32 << 17, (first, second)
    # ... and finds the objects set up, with their trees: no tree is
    # built again, nothing is opened again
    assert third["opens"] == 1 and third["reads"] > first["reads"] - 50, third
    assert third["cas_trees_built"] == first["cas_trees_built"], (first, third)
    assert third["cas_objects_opened"] == first["cas_objects_opened"], (first, third)
    assert third["cas_blocks_failed"] == 0


def test_cold_read_reads_and_hashes_once(tree, tmp_path):
    """No stored tree, no tree cache: the pass that builds the tree is the
    read; the rest of the verified data goes to the page cache."""
    src, img, objs, files = tree
    objs2 = str(tmp_path / "objs")
    shutil.copytree(objs, objs2, ignore=shutil.ignore_patterns(".cfs-trees"))
    size = len(files["mid"])
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs2, options=[f"stats_file={stats}", "tree_cache=none"]) as (mnt, proc):
        _drop_caches()
        fd = os.open(os.path.join(mnt, "mid"), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            assert os.pread(fd, BS, 0) == files["mid"][:BS]
            s1 = _snap(proc, stats)
            # over io_uring a pusher thread stores the rest after the reply
            deadline = time.monotonic() + 10
            while s1["transport"] == "io_uring" and s1["pushed_bytes"] < size - BS:
                assert time.monotonic() < deadline, s1
                time.sleep(0.02)
                s1 = _snap(proc, stats)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL)
            got = b""
            while len(got) < size:
                chunk = os.pread(fd, 1 << 20, len(got))
                assert chunk
                got += chunk
            assert got == files["mid"]
        finally:
            os.close(fd)
        s2 = _snap(proc, stats)
    assert s1["reads"] == 1 and s1["cas_trees_built"] == 1, s1
    assert s1["cas_bytes_read"] == size, s1
    assert s1["cas_blocks_hashed"] == (size + BS - 1) // BS, s1
    assert s1["pushed_bytes"] == size - BS, s1
    # the rest came from the page cache: nothing more read or hashed
    if s1["transport"] == "io_uring":
        # (over io_uring the pages are stored after the reply, by another
        # thread: a page or two may still be read again, and verified)
        assert s2["reads"] <= 4 and s2["cas_bytes_read"] <= size + 4 * BS, s2
        return
    assert s2["reads"] == 1 and s2["cas_bytes_read"] == size, s2
    assert s2["cas_blocks_hashed"] == s1["cas_blocks_hashed"], s2


def test_large_object_tree_from_the_store(tree, tmp_path):
    """A large object with the tree mkcomposefs stored: no pass of its own
    over the data, every byte read and hashed once."""
    src, img, objs, files = tree
    size = len(files["big"])
    _, obj, tfile = _obj(objs, os.path.join(src, "big"))
    assert os.path.isfile(tfile)
    assert os.stat(tfile).st_size == 64 + (size // BS + 127) // 128 * BS
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=[f"stats_file={stats}", "tree_cache=none"]) as (mnt, proc):
        _drop_caches()
        with open(os.path.join(mnt, "big"), "rb") as f:
            assert f.read() == files["big"]
        s = _snap(proc, stats)
    assert s["cas_trees_from_store"] == 1 and s["cas_trees_built"] == 0, s
    assert s["cas_bytes_read"] == size and s["cas_blocks_hashed"] == size // BS, s


@pytest.mark.parametrize("damage", ["flipped", "truncated", "other-object", "garbage"])
def test_bad_stored_tree_is_rebuilt(tree, tmp_path, damage):
    src, img, objs, files = tree
    objs2 = str(tmp_path / "objs")
    shutil.copytree(objs, objs2)
    _, _, tfile = _obj(objs2, os.path.join(src, "mid"))
    _, _, other = _obj(objs2, os.path.join(src, "big"))
    if damage == "flipped":
        _flip(tfile, 64 + 32 * 100 + 7)
    elif damage == "truncated":
        os.truncate(tfile, os.stat(tfile).st_size - 1)
    elif damage == "other-object":
        shutil.copy(other, tfile)
    else:
        _w(tfile, os.urandom(os.stat(tfile).st_size))
    before = open(tfile, "rb").read()
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs2, options=[f"stats_file={stats}", "tree_cache=none"]) as (mnt, proc):
        _drop_caches()
        with open(os.path.join(mnt, "mid"), "rb") as f:
            assert f.read() == files["mid"]
        s = _snap(proc, stats)
    assert s["cas_trees_rejected"] == 1 and s["cas_trees_built"] == 1, s
    assert s["cas_trees_from_store"] == 0 and s["read_errors"] == 0, s
    assert open(tfile, "rb").read() == before  # the daemon never writes into the store


@pytest.mark.parametrize("fresh_mount", [False, True], ids=["same-mount", "new-mount"])
def test_flipped_byte_after_cache_drop_fails_one_block(tree, tmp_path, fresh_mount):
    """The tree in memory (same mount) or stored beside the object (new
    mount): after the page cache is dropped, a flipped byte fails its block
    alone."""
    src, img, objs, files = tree
    objs2 = str(tmp_path / "objs")
    shutil.copytree(objs, objs2)
    data = files["big"]
    _, obj, _ = _obj(objs2, os.path.join(src, "big"))
    bad = 5 * (1 << 20) + 1234
    stats = str(tmp_path / "stats")
    opts = [f"stats_file={stats}", "tree_cache=none"]

    def check(mnt):
        _drop_caches()
        fd = os.open(os.path.join(mnt, "big"), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            with pytest.raises(OSError) as e:
                os.pread(fd, BS, bad // BS * BS)
            assert e.value.errno == 5
            for off in (0, bad // BS * BS - BS, bad // BS * BS + BS, len(data) - BS):
                assert os.pread(fd, BS, off) == data[off:off + BS]
        finally:
            os.close(fd)

    with fuse_mount(img, objs2, options=opts) as (mnt, proc):
        with open(os.path.join(mnt, "big"), "rb") as f:
            assert f.read() == data
        _flip(obj, bad)
        if not fresh_mount:
            check(mnt)
    if fresh_mount:
        with fuse_mount(img, objs2, options=opts) as (mnt, proc):
            check(mnt)
    s = _stats(stats)
    assert s["cas_blocks_failed"] >= 1 and s["cas_trees_built"] == 0, s
    lines = [l for l in proc.stderr_text.splitlines() if "/big" in l]
    assert len(lines) == 1 and "offset" in lines[0], proc.stderr_text


@pytest.mark.parametrize("hard", [64, 4096])
def test_low_fd_limit(tmp_path, hard):
    """RLIMIT_NOFILE soft 64 (hard 64, or 4096, which the daemon raises its
    soft limit to): 1000 files read in a loop, and 200 (300) held open at
    once, all read correctly; idle objects are closed to stay within the
    limit."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(3)
    files = {f"f{i:04d}": rnd.randbytes(5000 + i) for i in range(1000)}
    for name, data in files.items():
        _w(src / name, data)
    img, objs = _build(str(src), str(tmp_path))
    stats = str(tmp_path / "stats")
    held_n = 200 if hard == 64 else 300

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    with fuse_mount(img, objs, options=[f"stats_file={stats}"], preexec_fn=limit) as (mnt, proc):
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(l for l in f if l.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line  # soft raised to hard
        for _ in range(2):
            _drop_caches()
            _read_all(mnt, files)
        _drop_caches()
        held = [open(os.path.join(mnt, n), "rb") for n in list(files)[:held_n]]
        try:
            for f, n in zip(held, files):
                assert f.read() == files[n]
        finally:
            for f in held:
                f.close()
        s = _snap(proc, stats)
    assert s["read_errors"] == 0, s
    if hard == 64:
        assert s["cas_objects_evicted"] > 0 and s["cas_idle_objects"] < 64, s
    else:
        assert s["cas_idle_objects"] == 1000 and s["cas_objects_evicted"] == 0, s
