# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared fixtures: where the built programs are, kernel and FUSE mounts of
composefs images, and a full snapshot of a mounted tree for comparisons."""
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("CFS_BUILD", os.path.join(REPO, "build"))
DATA = os.path.join(REPO, "tests", "data")
CONFORMANCE = os.path.join(DATA, "conformance")

# Anything on a daemon's stderr matching this fails the test.
SUSPICIOUS = re.compile(r"ERROR: AddressSanitizer|LeakSanitizer|runtime error:|Segmentation fault")


def tool(name):
    """Path of a built program, found in the build tree."""
    for sub in ("cli", "daemon", "bench", "tests", ""):
        p = os.path.join(BUILD, sub, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    pytest.fail(f"{name} not built in {BUILD}")


def run(args, check=True, **kw):
    kw.setdefault("capture_output", True)
    p = subprocess.run([str(a) for a in args], **kw)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{args} exited {p.returncode}\nstdout: {p.stdout!r}\nstderr: {p.stderr!r}")
    return p


def is_root():
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@contextlib.contextmanager
def kernel_mount(image, objects):
    """Mount IMAGE the way the kernel serves composefs (erofs + overlayfs with
    OBJECTS as a data-only layer); yield the mountpoint; unmount after."""
    top = tempfile.mkdtemp(prefix="cfs-kmnt-")
    meta, mnt = os.path.join(top, "meta"), os.path.join(top, "mnt")
    os.mkdir(meta)
    os.mkdir(mnt)
    mounted = []
    try:
        run(["mount", "-t", "erofs", "-o", "loop,ro", image, meta])
        mounted.append(meta)
        run(["mount", "-t", "overlay", "-o",
             f"ro,lowerdir={meta}::{objects},metacopy=on,redirect_dir=on", "overlay", mnt])
        mounted.append(mnt)
        yield mnt
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", m])
        shutil.rmtree(top, ignore_errors=True)


def drain(stream):
    """Collect a pipe in the background, so that a chatty daemon never
    blocks on a full pipe; returns a function giving all text so far (after
    waiting briefly for the writer to finish when it has exited)."""
    chunks = []

    def pump():
        for line in stream:
            chunks.append(line)

    th = threading.Thread(target=pump, daemon=True)
    th.start()

    def text(wait=10):
        th.join(wait)
        return "".join(chunks)
    return text


def wait_for_mount(proc, mnt, timeout=20, stderr_text=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            try:
                os.statvfs(mnt)  # answered: not a dead mount left on MNT
                return
            except OSError:
                pass
        if proc.poll() is not None:
            if stderr_text:
                err = stderr_text()
            else:
                err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"daemon exited {proc.returncode} before mounting: {err}")
        time.sleep(0.05)
    pytest.fail(f"{mnt} not mounted after {timeout}s")


@contextlib.contextmanager
def fuse_mount(image, basedir=None, options=(), mnt=None, env=None, preexec_fn=None):
    """Run composefs-fuse in the foreground on IMAGE; yield (mountpoint,
    process); unmount and check a clean exit and a clean stderr after."""
    own = mnt is None
    if own:
        mnt = tempfile.mkdtemp(prefix="cfs-fmnt-")
    args = [tool("composefs-fuse"), "-f"]
    opts = list(options)
    # scripts/test.sh's second pass runs the daemon tests over io_uring
    if os.environ.get("CFS_TRANSPORT") == "io_uring" and not any(o.startswith("uring=") for o in opts):
        opts.append("uring=auto")
    if basedir is not None:
        opts.append(f"basedir={basedir}")
    if opts:
        args += ["-o", ",".join(opts)]
    args += [image, mnt]
    proc = subprocess.Popen([str(a) for a in args], stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=preexec_fn)
    stderr_text = drain(proc.stderr)
    try:
        wait_for_mount(proc, mnt, stderr_text=stderr_text)
        yield mnt, proc
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        err = stderr_text()
        proc.stderr_text = err  # for tests that check the daemon's log
        if own:
            os.rmdir(mnt)
        assert rc == 0, f"daemon exited {rc}: {err}"
        assert not SUSPICIOUS.search(err), err
        # scripts/test.sh's second pass: every mount really served over io_uring
        if os.environ.get("CFS_TRANSPORT") == "io_uring" and "uring=auto" in opts:
            assert "transport: FUSE over io_uring" in err, err


def list_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        # composefs-fuse with xattrs=auto on an image without visible
        # xattrs: the kernel is told there are none (documented, and
        # asserted both ways in test_metadata.py)
        if e.errno == errno.EOPNOTSUPP:
            return {}
        return None
    out = {}
    for n in sorted(names):
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            out[n] = f"error {e.errno}"
    return out


def snapshot(root, content=True, xattrs=True, inode_groups=True):
    """Everything a reader can see below ROOT: per relative path, the lstat
    fields, symlink target, xattrs and a content hash.  Inode numbers are not
    comparable between two mounts, so hard links are recorded as groups of
    paths sharing one st_ino."""
    snap = {}
    by_ino = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames + filenames) if dirpath == root else sorted(dirnames + filenames):
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            e = {
                "mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
                "size": st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                "mtime": st.st_mtime_ns, "rdev": st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
            }
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            if xattrs:
                e["xattrs"] = list_xattrs(p)
            if content and stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                e["sha256"] = h.hexdigest()
            if not stat.S_ISDIR(st.st_mode):
                by_ino.setdefault(st.st_ino, []).append(rel)
            snap[rel] = e
    if inode_groups:
        snap["<hardlinks>"] = sorted(sorted(v) for v in by_ino.values() if len(v) > 1)
    return snap


def assert_same_tree(a, b):
    """Compare two snapshots with a readable first difference."""
    ka, kb = set(a), set(b)
    assert ka == kb, f"only left: {sorted(ka - kb)[:10]} only right: {sorted(kb - ka)[:10]}"
    for k in sorted(ka):
        assert a[k] == b[k], f"{k!r} differs:\n left  {a[k]}\n right {b[k]}"


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


def read_stats(path):
    """The daemon's stats file: settings as words ("io pread"), counters as ints."""
    out = {}
    for line in open(path):
        k, v = line.split()
        out[k] = int(v) if v.isdigit() else v
    return out


def flip_byte(path, off, xor=0x55):
    """Change one byte of a file in place (tampering with an object)."""
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ xor]))
