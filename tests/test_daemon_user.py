# SPDX-License-Identifier: LGPL-2.1-or-later
"""composefs-fuse run by an ordinary user: mounts through fusermount3
(nosuid, nodev, auto_unmount), shows what the kernel mount shows to that user
(no trusted.* xattrs), falls back from passthrough to daemon-served reads,
and leaves no dead mount behind when killed."""
import contextlib
import os
import signal
import pickle
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import (REPO, SUSPICIOUS, assert_same_tree, fuse_mount, kernel_mount, needs_root,
                      run, tool)
from test_daemon import build_image

pytestmark = [needs_root,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
              pytest.mark.skipif(not shutil.which("fusermount3"), reason="no fusermount3")]

USER = "cfsd-test"


@pytest.fixture(scope="module")
def plain_user():
    created = False
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
        created = True
        pw = pwd.getpwnam(USER)
    try:
        yield pw.pw_uid, pw.pw_gid
    finally:
        if created:
            subprocess.run(["userdel", USER])


@pytest.fixture(scope="module")
def dev_fuse_for_all():
    """Make /dev/fuse usable by everyone for the test; restore its mode."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", mode | 0o006)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


@pytest.fixture(scope="module")
def workspace(plain_user, dev_fuse_for_all):
    """A world-readable source tree, image and object store, a home and a
    mountpoint owned by the user."""
    uid, gid = plain_user
    top = tempfile.mkdtemp(prefix="cfs-user-")
    os.chmod(top, 0o755)
    src = os.path.join(top, "src")
    os.makedirs(os.path.join(src, "dir"))
    data = os.urandom(3 << 20)
    for name, content in [("big", data), ("small", b"small\n"), ("dir/mid", data[:70000])]:
        with open(os.path.join(src, name), "wb") as f:
            f.write(content)
    with open(os.path.join(src, "secret"), "wb") as f:
        f.write(b"for root only\n")
    os.chmod(os.path.join(src, "secret"), 0o600)
    os.setxattr(os.path.join(src, "big"), "user.visible", b"yes")
    os.setxattr(os.path.join(src, "big"), "trusted.hidden", b"root only")
    os.setxattr(os.path.join(src, "big"), "trusted.overlay.escaped", b"root only too")
    os.symlink("big", os.path.join(src, "link"))
    img, objs = build_image(src, top)
    run(["chmod", "-R", "a+rX", top])
    home = os.path.join(top, "home")
    mnt = os.path.join(top, "mnt")
    for d in (home, mnt):
        os.mkdir(d)
        os.chown(d, uid, gid)
    try:
        yield {"top": top, "src": src, "img": img, "objs": objs, "home": home, "mnt": mnt,
               "data": data, "uid": uid, "gid": gid}
    finally:
        if mounted(mnt):
            subprocess.run(["umount", "-l", mnt])
        shutil.rmtree(top, ignore_errors=True)


def as_user(ws):
    uid, gid = ws["uid"], ws["gid"]

    def drop():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return drop


def user_env(ws):
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": ws["home"]}


USER_SNAPSHOT = """
import hashlib, os, pickle, stat, sys
sys.path.insert(0, sys.argv[1])
from conftest import snapshot
root = sys.argv[2]
snap = snapshot(root, content=False)
for rel, e in snap.items():
    if isinstance(e, dict) and stat.S_ISREG(e["mode"]):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                e["sha256"] = hashlib.sha256(f.read()).hexdigest()
        except OSError as err:
            e["sha256"] = "error %d" % err.errno
sys.stdout.buffer.write(pickle.dumps(snap))
"""


def mounted(mnt):
    """Root cannot stat another user's FUSE mount (no allow_other), so
    os.path.ismount() is useless here: read the mount table instead."""
    with open("/proc/self/mountinfo") as f:
        return any(l.split()[4] == mnt for l in f)


@contextlib.contextmanager
def user_mount(ws, options=(), env=None):
    """Like conftest.fuse_mount(), run as the user; yields the process."""
    opts = ",".join([f"basedir={ws['objs']}", *options])
    proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", opts, ws["img"], ws["mnt"]],
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_user(ws),
                            env={**user_env(ws), **(env or {})})
    try:
        deadline = time.monotonic() + 20
        while not mounted(ws["mnt"]):
            assert proc.poll() is None, f"daemon exited {proc.returncode}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "not mounted"
            time.sleep(0.05)
        yield proc
    finally:
        if mounted(ws["mnt"]):
            subprocess.run(["fusermount3", "-u", ws["mnt"]], preexec_fn=as_user(ws),
                           env=user_env(ws))
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        proc.stderr_text = proc.stderr.read()
        assert rc == 0, f"daemon exited {rc}: {proc.stderr_text}"
        assert not SUSPICIOUS.search(proc.stderr_text), proc.stderr_text


def snapshot_as_user(ws, root):
    """conftest.snapshot() of ROOT as seen by the user; unreadable files are
    recorded with their errno."""
    code = [sys.executable, "-c", USER_SNAPSHOT, os.path.join(REPO, "tests"), root]
    p = subprocess.run(code, capture_output=True, preexec_fn=as_user(ws), env=user_env(ws),
                       cwd="/")
    assert p.returncode == 0, p.stderr.decode()
    return pickle.loads(p.stdout)


def test_user_mount_matches_kernel_view(workspace):
    ws = workspace
    with kernel_mount(ws["img"], ws["objs"]) as kmnt:
        os.chmod(os.path.dirname(kmnt), 0o755)
        ksnap = snapshot_as_user(ws, kmnt)
    fmnt = ws["mnt"]
    with user_mount(ws):
        # mounted by fusermount3 for the user: nosuid, nodev, the user's id
        line = [l for l in open("/proc/self/mountinfo").read().splitlines()
                if f" {fmnt} " in l][0]
        opts = line.split()[5].split(",")
        assert "nosuid" in opts and "nodev" in opts and "ro" in opts
        assert f"user_id={ws['uid']}" in line
        fsnap = snapshot_as_user(ws, fmnt)
        # the ordinary user unmounts it
        p = subprocess.run(["fusermount3", "-u", fmnt], preexec_fn=as_user(ws),
                           env=user_env(ws), capture_output=True)
        assert p.returncode == 0, p.stderr
        assert not mounted(fmnt)
    assert_same_tree(ksnap, fsnap)
    big = fsnap["big"]
    assert big["xattrs"] == {"user.visible": b"yes"}     # no trusted.* for the user
    assert big["sha256"] is not None and fsnap["dir/mid"]["size"] == 70000
    assert fsnap["secret"]["sha256"] == "error 13"       # permissions enforced


def read_as_user(ws, path):
    code = "import sys; sys.stdout.buffer.write(open(%r, 'rb').read())" % path
    p = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       preexec_fn=as_user(ws), env=user_env(ws))
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_user_passthrough_falls_back(workspace):
    ws = workspace
    stats = os.path.join(ws["home"], "stats")
    fmnt = ws["mnt"]
    with user_mount(ws, options=["verity=off", f"stats_file={stats}"]) as proc:
        assert read_as_user(ws, os.path.join(fmnt, "big")) == ws["data"]
    s = dict(l.split() for l in open(stats))
    assert int(s["opens_passthrough"]) == 0 and s["open_mode"] == "no-open"
    assert s["verification"] == "off" and s["passthrough"] == "auto"
    assert s["io"] in ("io_uring", "pread") and f"io: {s['io']}" in proc.stderr_text
    assert "not permitted" in proc.stderr_text
    assert "daemon-served reads" in proc.stderr_text


def test_user_without_writable_cache_dir_still_mounts(workspace):
    """A user whose ~/.cache cannot be created (here: HOME is the user's
    own directory, read-only) still mounts: Merkle trees are kept in memory
    only, with one warning."""
    ws = workspace
    stats = os.path.join(ws["home"], "stats")
    fmnt = ws["mnt"]
    ro_home = os.path.join(ws["top"], "ro-home")
    os.mkdir(ro_home, 0o555)
    os.chown(ro_home, ws["uid"], ws["gid"])
    try:
        with user_mount(ws, options=["passthrough=off", f"stats_file={stats}"],
                        env={"HOME": ro_home}) as proc:
            assert read_as_user(ws, os.path.join(fmnt, "big")) == ws["data"]
    finally:
        os.rmdir(ro_home)
    s = dict(l.split() for l in open(stats))
    assert int(s["cas_trees_built"]) + int(s["cas_trees_from_store"]) >= 1, s
    assert int(s["cas_trees_written"]) == 0, s
    assert s["verification"] == "userspace"
    warn = [l for l in proc.stderr_text.splitlines() if "unusable" in l]
    assert len(warn) == 1 and os.path.join(ro_home, ".cache") in warn[0], proc.stderr_text
    assert "Permission denied" in warn[0]


def test_user_with_root_home_saves_trees_in_own_cache(workspace):
    """mount.fuse3 (an fstab "user" mount) runs the daemon with HOME=/root:
    the tree cache is the one under the user's passwd home instead, with
    no warning (the trees of this image's objects came with the store, so
    none needs saving: the daemon's own line names the cache)."""
    ws = workspace
    old_home = pwd.getpwnam(USER).pw_dir
    run(["usermod", "-d", ws["home"], USER])
    cache = os.path.join(ws["home"], ".cache", "composefs-fuse")
    try:
        with user_mount(ws, options=["passthrough=off"], env={"HOME": "/root"}) as proc:
            assert read_as_user(ws, os.path.join(ws["mnt"], "big")) == ws["data"]
        assert "unusable" not in proc.stderr_text, proc.stderr_text
        assert f"tree cache {cache}," in proc.stderr_text, proc.stderr_text
        assert os.stat(cache).st_uid == ws["uid"]
    finally:
        run(["usermod", "-d", old_home, USER])
        shutil.rmtree(os.path.join(ws["home"], ".cache"), ignore_errors=True)


def children(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _state(pid):
    """The state letter of process PID (Z for a zombie), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("when", ["at-mount", "after-read", "after-signals"])
def test_user_auto_unmount_after_kill(workspace, when):
    """An ordinary user's daemon killed with SIGKILL leaves no dead mount:
    its watchdog unmounts.  The watchdog also outlives the signals a
    service manager sends to every process of a unit (systemctl kill -s
    USR1, SIGTERM on stop) while the daemon lives on."""
    ws = workspace
    proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", f"basedir={ws['objs']}",
                             ws["img"], ws["mnt"]], stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_user(ws), env=user_env(ws))
    try:
        deadline = time.monotonic() + 20
        while not mounted(ws["mnt"]):
            assert proc.poll() is None and time.monotonic() < deadline, "not mounted"
            time.sleep(0.05)
        if when == "after-read":
            p = subprocess.run(["cat", os.path.join(ws["mnt"], "dir", "mid")], capture_output=True,
                               preexec_fn=as_user(ws), env=user_env(ws))
            assert p.stdout == ws["data"][:70000]
        if when == "after-signals":
            # Ours, and libfuse's fusermount3 -o auto_unmount: the children
            # that stay (fusermount3's mount step may still be ending).
            kids = children(proc.pid)
            time.sleep(0.3)
            kids = [k for k in children(proc.pid) if k in kids and _state(k) not in (None, "Z")]
            assert kids
            for k in kids:
                for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                    os.kill(k, sig)
            time.sleep(0.2)
            dead = [k for k in kids if _state(k) in (None, "Z")]
            assert not dead, f"killed by a signal: {dead}"
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while mounted(ws["mnt"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not mounted(ws["mnt"]), "dead mount left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mounted(ws["mnt"]):
            subprocess.run(["umount", "-l", ws["mnt"]])


def test_root_mount_allow_other_seen_by_user(workspace, tmp_path):
    """A root daemon serving everyone (allow_other): an ordinary user sees
    exactly what the kernel mount shows that user (no trusted.*, permissions
    enforced), while root still sees trusted.* on the same mount."""
    ws = workspace
    with kernel_mount(ws["img"], ws["objs"]) as kmnt:
        os.chmod(os.path.dirname(kmnt), 0o755)
        ksnap = snapshot_as_user(ws, kmnt)
    mnt = tempfile.mkdtemp(prefix="cfs-allow-")
    os.chmod(mnt, 0o755)
    try:
        with fuse_mount(ws["img"], ws["objs"], mnt=mnt, options=["allow_other"]) as (fmnt, proc):
            fsnap = snapshot_as_user(ws, fmnt)
            assert os.getxattr(os.path.join(fmnt, "big"), "trusted.hidden") == b"root only"
            assert "trusted.overlay.escaped" in os.listxattr(os.path.join(fmnt, "big"))
    finally:
        os.rmdir(mnt)
    assert_same_tree(ksnap, fsnap)
    assert fsnap["big"]["xattrs"] == {"user.visible": b"yes"}
