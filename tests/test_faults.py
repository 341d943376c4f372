# SPDX-License-Identifier: LGPL-2.1-or-later
"""A failing disk is not tampering: with the object store on a FUSE mirror
(tests/helpers/failfs.c) whose reads of one byte range fail with EIO, the
reader gets EIO for what it cannot verify, the log names an I/O error and
its offset, and the verification counters stay 0.  Tampering, a missing
object and a refused path are each told apart in the log and counted."""
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import fuse_mount, read_stats, run, tool
from test_datapath import _drop_caches, _snap

BS = 4096


@contextlib.contextmanager
def failing_store(store, name, off, length):
    mnt = tempfile.mkdtemp(prefix="cfs-failfs-")
    p = subprocess.Popen([tool("failfs"), "-f", "-o",
                          f"src={store},fail_name={name},fail_off={off},fail_len={length},ro",
                          mnt], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline, "failfs did not mount"
            time.sleep(0.02)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        p.wait(timeout=30)
        os.rmdir(mnt)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("faults"))
    src = os.path.join(d, "src")
    os.mkdir(src)
    rnd = random.Random(13)
    data = {"big": rnd.randbytes(3 << 20), "small": rnd.randbytes(40000),
            "other": rnd.randbytes(200000)}
    for n, b in data.items():
        with open(os.path.join(src, n), "wb") as f:
            f.write(b)
    img, objs = os.path.join(d, "img.cfs"), os.path.join(d, "objs")
    run([tool("mkcomposefs"), f"--digest-store={objs}", src, img])
    digests = {n: run(["fsverity", "digest", "--compact", os.path.join(src, n)]).stdout.decode().strip()
               for n in data}
    return {"dir": d, "img": img, "objs": objs, "data": data, "digest": digests}


def _pread(path, off, n=BS):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


@pytest.mark.parametrize("trees", ["stored", "none"])
def test_disk_error_is_not_tampering(image, tmp_path, trees):
    """A bad region on the store's disk: with a stored tree, only the blocks
    read from it fail and the log names an I/O error at its offset; with
    no tree, the tree cannot be built and every read of that file fails,
    still as an I/O error.  No verification failure is counted."""
    objs = str(tmp_path / "objs")
    shutil.copytree(image["objs"], objs,
                    ignore=None if trees == "stored" else shutil.ignore_patterns(".cfs-trees"))
    d = image["digest"]["big"]
    data = image["data"]["big"]
    bad = 1 << 20                      # one failing 4 KiB range at 1 MiB
    stats = str(tmp_path / "stats")
    with failing_store(objs, d[2:], bad, BS) as store:
        with fuse_mount(image["img"], store, options=[f"stats_file={stats}", "tree_cache=none"]) \
                as (mnt, proc):
            _drop_caches()
            f = os.path.join(mnt, "big")
            if trees == "stored":
                assert _pread(f, 0) == data[:BS]
                assert _pread(f, bad + 2 * BS) == data[bad + 2 * BS:bad + 3 * BS]
            with pytest.raises(OSError) as e:
                _pread(f, bad)
            assert e.value.errno == 5
            if trees == "stored":
                assert _pread(f, len(data) - BS) == data[-BS:]
            assert open(os.path.join(mnt, "small"), "rb").read() == image["data"]["small"]
            s = _snap(proc, stats)
    assert s["cas_read_io_errors"] >= 1, s
    assert s["cas_blocks_failed"] == 0 and s["cas_objects_mismatched"] == 0, s
    lines = [l for l in proc.stderr_text.splitlines() if "/big" in l]
    assert len(lines) == 1, proc.stderr_text
    assert "I/O error from the object store" in lines[0], lines[0]
    if trees == "stored":
        assert f"at offset {bad}:" in lines[0], lines[0]
    assert "does not match" not in lines[0]


def test_causes_are_told_apart(image, tmp_path):
    """Tampering (a block, and a whole object without a tree), a missing
    object: each has its own words in the log and its own counter."""
    objs = str(tmp_path / "objs")
    shutil.copytree(image["objs"], objs)
    dig = image["digest"]
    obj = lambda n: os.path.join(objs, dig[n][:2], dig[n][2:])  # noqa: E731
    with open(obj("big"), "r+b") as f:              # a block, with a stored tree
        f.seek(5 * BS + 7)
        f.write(b"\xff")
    with open(obj("small"), "r+b") as f:            # no tree: the whole object
        f.seek(100)
        f.write(b"\x00\x01")
    os.unlink(obj("other"))                          # missing
    stats = str(tmp_path / "stats")
    with fuse_mount(image["img"], objs, options=[f"stats_file={stats}", "tree_cache=none"]) \
            as (mnt, proc):
        for name, off in (("big", 5 * BS), ("small", 0), ("other", 0)):
            with pytest.raises(OSError) as e:
                _pread(os.path.join(mnt, name), off)
            assert e.value.errno == 5
        assert _pread(os.path.join(mnt, "big"), 0) == image["data"]["big"][:BS]
        s = _snap(proc, stats)
    log = proc.stderr_text
    line = lambda n: [l for l in log.splitlines() if f"/{n}:" in l]  # noqa: E731
    assert len(line("big")) == 1 and f"block at offset {5 * BS} does not match" in line("big")[0], log
    assert len(line("small")) == 1 and "do not match its fs-verity digest" in line("small")[0], log
    assert len(line("other")) == 1 and "not in any basedir" in line("other")[0], log
    # (the kernel retries a failed read once, so a block may be counted twice)
    assert s["cas_blocks_failed"] >= 1 and s["cas_objects_mismatched"] == 1, s
    assert s["objects_missing"] >= 1 and s["cas_read_io_errors"] == 0, s
