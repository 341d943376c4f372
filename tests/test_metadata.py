# SPDX-License-Identifier: LGPL-2.1-or-later
"""Metadata without round trips: what a warm walk still sends to the daemon
(counted in its stats), the errno of an image without xattrs in both modes
against the kernel's mount, and permission checks that do not ask for
ACLs when the image has none."""
import errno
import shutil
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import fuse_mount, kernel_mount, run, tool
from test_datapath import _snap

REQUESTS = ("opens", "reads", "lookups", "readdirs", "opendirs", "getattrs", "getxattrs",
            "listxattrs", "readlinks")


def _tree(root, xattr=None):
    os.makedirs(os.path.join(root, "a", "b"))
    for i in range(50):
        with open(os.path.join(root, "a", f"f{i}"), "wb") as f:
            f.write(os.urandom(100 + i * 300))
    with open(os.path.join(root, "a", "b", "inline"), "wb") as f:
        f.write(b"x")
    os.symlink("../f1", os.path.join(root, "a", "b", "link"))
    os.chmod(root, 0o755)
    if xattr:
        os.setxattr(os.path.join(root, "a", "f3"), *xattr)


def _image(tmp_path, xattr=None):
    src = str(tmp_path / "src")
    _tree(src, xattr)
    img, objs = str(tmp_path / "img.cfs"), str(tmp_path / "objs")
    run([tool("mkcomposefs"), f"--digest-store={objs}", src, img])
    return img, objs


def _walks(mnt):
    subprocess.run(["ls", "-lR", mnt], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["find", mnt], check=True, stdout=subprocess.DEVNULL)


def test_warm_walk_sends_nothing(tmp_path):
    img, objs = _image(tmp_path)
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=[f"stats_file={stats}"]) as (mnt, proc):
        _walks(mnt)
        first = _snap(proc, stats)
        for _ in range(3):
            _walks(mnt)
        warm = _snap(proc, stats)
    assert first["image_xattrs"] == "none" and first["xattrs"] == "auto", first
    assert "xattrs: none in the image" in proc.stderr_text
    for k in REQUESTS:
        assert warm[k] == first[k], (k, first, warm)
    # no OPENDIR after the first (ENOSYS), listings read once
    assert first["opendirs"] == 1 and first["getxattrs"] + first["listxattrs"] <= 2, first


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_no_xattr_errno_both_ways(tmp_path, mode):
    """xattrs=auto: EOPNOTSUPP (the kernel is told there are none);
    xattrs=always: the kernel mount's ENODATA and empty list."""
    img, objs = _image(tmp_path)
    stats = str(tmp_path / "stats")
    with kernel_mount(img, objs) as kmnt:
        kf = os.path.join(kmnt, "a", "f1")
        assert os.listxattr(kf) == []
        with pytest.raises(OSError) as e:
            os.getxattr(kf, "user.nothing")
        assert e.value.errno == errno.ENODATA
    with fuse_mount(img, objs, options=[f"xattrs={mode}", f"stats_file={stats}"]) as (mnt, proc):
        f = os.path.join(mnt, "a", "f1")
        for _ in range(3):
            if mode == "always":
                assert os.listxattr(f) == []
                with pytest.raises(OSError) as e:
                    os.getxattr(f, "user.nothing")
                assert e.value.errno == errno.ENODATA
            else:
                for call in (lambda: os.listxattr(f), lambda: os.getxattr(f, "user.nothing")):
                    with pytest.raises(OSError) as e:
                        call()
                    assert e.value.errno == errno.EOPNOTSUPP
        s = _snap(proc, stats)
    if mode == "always":
        assert s["getxattrs"] >= 3 and s["listxattrs"] >= 3, s
    else:
        # the first of each is answered ENOSYS, the kernel asks no more
        assert s["getxattrs"] <= 1 and s["listxattrs"] <= 1, s


def test_image_with_xattrs_serves_them(tmp_path):
    img, objs = _image(tmp_path, ("user.tag", b"v1"))
    stats = str(tmp_path / "stats")
    with fuse_mount(img, objs, options=[f"stats_file={stats}"]) as (mnt, proc):
        assert os.getxattr(os.path.join(mnt, "a", "f3"), "user.tag") == b"v1"
        assert os.listxattr(os.path.join(mnt, "a", "f1")) == []
        with pytest.raises(OSError) as e:
            os.getxattr(os.path.join(mnt, "a", "f1"), "user.tag")
        assert e.value.errno == errno.ENODATA
        s = _snap(proc, stats)
    assert s["image_xattrs"] == "yes", s


@pytest.mark.parametrize("image_xattrs", [False, True], ids=["no-xattrs", "xattrs"])
@pytest.mark.parametrize("mode", ["auto", "always"])
def test_permission_checks_ask_for_no_acl(tmp_path, mode, image_xattrs):
    """The kernel makes the FUSE root inode before INIT, with ACL support
    still off, and marks its ACLs uncacheable: with ACL support on, every
    permission check on the root by another user asked the daemon for
    system.posix_acl_access.  An image without ACLs (with other xattrs or
    none) does not turn ACL support on, so reads by another user send no
    xattr request at all."""
    img, objs = _image(tmp_path, ("user.tag", b"v") if image_xattrs else None)
    stats = str(tmp_path / "stats")
    code = ("import sys\nfor _ in range(20):\n"
            "    assert open(sys.argv[1], 'rb').read()\n")

    def nobody():
        os.setgid(65534)
        os.setuid(65534)

    opts = ["allow_other", f"xattrs={mode}", f"stats_file={stats}"]
    with fuse_mount(img, objs, options=opts) as (mnt, proc):
        before = _snap(proc, stats)
        p = subprocess.run([sys.executable, "-c", code, os.path.join(mnt, "a", "f1")],
                           preexec_fn=nobody, capture_output=True)
        assert p.returncode == 0, p.stderr
        middle = _snap(proc, stats)
        p = subprocess.run([sys.executable, "-c", code, os.path.join(mnt, "a", "f1")],
                           preexec_fn=nobody, capture_output=True)
        assert p.returncode == 0, p.stderr
        after = _snap(proc, stats)
    assert middle["image_xattrs"] == ("yes" if image_xattrs else "none"), middle
    assert after["getxattrs"] == middle["getxattrs"] == before["getxattrs"], (before, middle, after)


def _as_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _nobody_reads(path):
    """errno of nobody's open() of PATH, 0 if it reads."""
    code = "import sys\ntry:\n    open(sys.argv[1], 'rb').read()\nexcept OSError as e:\n" \
           "    sys.exit(e.errno)\n"
    return subprocess.run([sys.executable, "-c", code, path], preexec_fn=_as_nobody).returncode


def test_root_mount_serves_everyone_unless_private(tmp_path):
    """Root's mount is readable by other users, as the kernel's composefs
    mount is (allow_other by default, the kernel checking the modes):
    nobody reads a 0644 file but not a 0600 one.  private keeps the whole
    mount to root."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "open").write_bytes(b"for all\n" * 100)
    (src / "d" / "secret").write_bytes(b"root only\n" * 100)
    os.chmod(src / "d" / "secret", 0o600)
    img, objs = str(tmp_path / "img.cfs"), str(tmp_path / "objs")
    run([tool("mkcomposefs"), f"--digest-store={objs}", str(src), img])
    with kernel_mount(img, objs) as kmnt:
        os.chmod(os.path.dirname(kmnt), 0o755)
        kernel = [_nobody_reads(os.path.join(kmnt, "d", n)) for n in ("open", "secret")]
    assert kernel == [0, errno.EACCES]
    mnt = tempfile.mkdtemp(prefix="cfs-nobody-")  # outside pytest's 0700 directories
    os.chmod(mnt, 0o755)
    with fuse_mount(img, objs, mnt=mnt) as (fmnt, proc):
        assert [_nobody_reads(os.path.join(fmnt, "d", n)) for n in ("open", "secret")] == kernel
    with fuse_mount(img, objs, mnt=mnt, options=["private"]) as (fmnt, proc):
        assert _nobody_reads(os.path.join(fmnt, "d", "open")) == errno.EACCES
        assert open(os.path.join(fmnt, "d", "secret"), "rb").read() == b"root only\n" * 100
    os.rmdir(mnt)


@pytest.mark.skipif(not shutil.which("setfacl"), reason="no setfacl")
def test_noacl_leaves_acls_unenforced(tmp_path):
    """An ACL that lets nobody read a 0600 file is enforced as the kernel
    mount does; with upstream cfs-fuse's noacl only the mode bits count
    (the ACL is still there to read)."""
    src = tmp_path / "src"
    src.mkdir()
    f = src / "acl"
    f.write_bytes(b"by acl\n" * 100)
    os.chmod(f, 0o600)
    run(["setfacl", "-m", "u:65534:r", str(f)])
    img, objs = str(tmp_path / "img.cfs"), str(tmp_path / "objs")
    run([tool("mkcomposefs"), f"--digest-store={objs}", str(src), img])
    with kernel_mount(img, objs) as kmnt:
        os.chmod(os.path.dirname(kmnt), 0o755)
        assert _nobody_reads(os.path.join(kmnt, "acl")) == 0
    mnt = tempfile.mkdtemp(prefix="cfs-nobody-")  # outside pytest's 0700 directories
    os.chmod(mnt, 0o755)
    with fuse_mount(img, objs, mnt=mnt) as (fmnt, proc):
        assert _nobody_reads(os.path.join(fmnt, "acl")) == 0
    with fuse_mount(img, objs, mnt=mnt, options=["noacl"]) as (fmnt, proc):
        assert _nobody_reads(os.path.join(fmnt, "acl")) == errno.EACCES
        assert "system.posix_acl_access" in os.listxattr(os.path.join(fmnt, "acl"))
    os.rmdir(mnt)
