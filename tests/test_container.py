# SPDX-License-Identifier: LGPL-2.1-or-later
"""A rootless container from a composefs image, with no privilege at all: an
ordinary user builds an image of a busybox root filesystem with mkcomposefs,
mounts it with composefs-fuse (through fusermount3), and in a user and mount
namespace of its own (unshare --map-root-user) puts an overlayfs writable
layer on top of the FUSE mount and runs a command in it with bubblewrap.

bubblewrap 0.8 (Debian 12) has no --overlay options, so the overlay is
mounted by the namespace's root before bwrap starts; it exists only in that
namespace and goes with it.  The image's files are the user's, so they are
root's in the container and a write copies them up into the user's layer."""
import errno
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile

import pytest

from conftest import assert_same_tree, flip_byte, needs_root, read_stats, run, tool
from test_daemon_user import (as_user, dev_fuse_for_all, mounted, plain_user,  # noqa: F401
                              snapshot_as_user, user_env, user_mount)

BUSYBOX = shutil.which("busybox")


def static_binary(path):
    """True when PATH is a 64-bit ELF executable with no program interpreter
    (it runs in a root filesystem without a libc)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", phdrs, i * phentsize)[0] != PT_INTERP
               for i in range(phnum))


pytestmark = [needs_root,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
              pytest.mark.skipif(not shutil.which("fusermount3"), reason="no fusermount3"),
              pytest.mark.skipif(not shutil.which("unshare"), reason="no unshare (util-linux)"),
              pytest.mark.skipif(not shutil.which("bwrap"), reason="no bwrap (bubblewrap)"),
              pytest.mark.skipif(not BUSYBOX or not static_binary(BUSYBOX),
                                 reason="no static busybox (busybox-static)")]

APPLETS = ["sh", "cat", "echo", "ls", "rm", "sha256sum", "hostname"]

# Run by the user in its home: the root filesystem of the container.
ROOTFS = r"""
mkdir -p rootfs/bin rootfs/etc rootfs/root rootfs/tmp rootfs/proc rootfs/dev rootfs/usr/share/data
cp "$1" rootfs/bin/busybox
shift
for applet in "$@"; do ln -s busybox "rootfs/bin/$applet"; done
printf 'NAME="composefs test"\nID=cfstest\n' > rootfs/etc/os-release
echo "message of the day" > rootfs/etc/motd
echo "welcome" > rootfs/etc/issue
head -c 3000000 /dev/urandom > rootfs/usr/share/data/big
"""

# Run by the user as `unshare --user --map-root-user --mount sh -ec CONTAINER
# sh IMAGE_MOUNT LAYER COMMAND`: the README's recipe.
CONTAINER = r"""
mkdir -p "$2/upper" "$2/work" "$2/merged"
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work,userxattr" "$2/merged"
exec bwrap --bind "$2/merged" / --proc /proc --dev /dev --unshare-all --die-with-parent \
    --hostname cfs-container /bin/sh -c "$3"
"""

HOSTNAME = "cfs-container"


@pytest.fixture(scope="module")
def container_ws(plain_user, dev_fuse_for_all):
    """The user's home with a busybox root filesystem, its image and object
    store (both made by the user, so the files are the user's), and a
    mountpoint."""
    uid, gid = plain_user
    top = tempfile.mkdtemp(prefix="cfs-container-")
    os.chmod(top, 0o755)
    home = os.path.join(top, "home")
    os.mkdir(home)
    os.chown(home, uid, gid)
    ws = {"top": top, "home": home, "mnt": os.path.join(home, "mnt"),
          "img": os.path.join(home, "image.cfs"), "objs": os.path.join(home, "objects"),
          "rootfs": os.path.join(home, "rootfs"), "uid": uid, "gid": gid}
    try:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                               capture_output=True, text=True, preexec_fn=as_user(ws),
                               env=user_env(ws))
        if probe.returncode != 0:
            pytest.skip(f"no unprivileged user namespaces: {probe.stderr.strip()}")
        user_run(ws, ["sh", "-ec", ROOTFS, "sh", BUSYBOX, *APPLETS])
        user_run(ws, [tool("mkcomposefs"), "--digest-store=objects", "rootfs", "image.cfs"])
        user_run(ws, ["mkdir", "mnt"])
        yield ws
    finally:
        if mounted(ws["mnt"]):
            subprocess.run(["umount", "-l", ws["mnt"]])
        shutil.rmtree(top, ignore_errors=True)


def user_run(ws, args, check=True):
    """Run ARGS as the user in its home; the completed process (text)."""
    return run(args, check=check, text=True, preexec_fn=as_user(ws), env=user_env(ws),
               cwd=ws["home"], timeout=120)


def run_container(ws, layer, command):
    """COMMAND run by /bin/sh in a container whose root is the image mounted
    at ws["mnt"] with the writable layer LAYER (upper, work and merged
    directories, made by the user) on top.  The namespaces are gone when this
    returns: no mount of LAYER is left in the test's namespace."""
    p = user_run(ws, ["unshare", "--user", "--map-root-user", "--mount",
                      "sh", "-ec", CONTAINER, "sh", ws["mnt"], layer, command], check=False)
    assert not mounted(os.path.join(layer, "merged"))
    with open("/proc/self/mountinfo") as f:
        assert layer not in f.read()
    return p


def tree(root):
    """Per relative path below ROOT: "dir", ("whiteout",) for a character
    device 0/0, or (bytes, uid) for a regular file."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[rel] = ("whiteout",)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = (f.read(), st.st_uid)
            else:
                out[rel] = ("mode", st.st_mode)
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_container_writes_to_its_layer_only(container_ws):
    """In the container the image's files read as built (os-release, the
    data file's digest), the namespace's root can write a new file, append
    to an image file and delete one; the writes are in the user's upper
    directory (owned by the user, the deletion a whiteout) and nowhere else:
    the FUSE mount shows exactly what it showed before.  Both the overlay
    (with the namespace) and the FUSE mount are gone afterwards: the
    daemon exits on the user's fusermount3 -u, which it would not do while
    any namespace still held the mount."""
    ws = container_ws
    rootfs, layer = ws["rootfs"], os.path.join(ws["home"], "layer-rw")
    os_release = read(os.path.join(rootfs, "etc/os-release"))
    motd = read(os.path.join(rootfs, "etc/motd"))
    big_sha = hashlib.sha256(read(os.path.join(rootfs, "usr/share/data/big"))).hexdigest()
    command = ("cat /etc/os-release; sha256sum /usr/share/data/big;"
               " echo 'written in the container' > /root/new;"
               " echo 'changed in the container' >> /etc/motd;"
               " rm /etc/issue; cat /etc/motd; ls /etc; hostname")
    with user_mount(ws):
        before = snapshot_as_user(ws, ws["mnt"])
        p = run_container(ws, layer, command)
        after = snapshot_as_user(ws, ws["mnt"])
    assert not mounted(ws["mnt"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == (os_release.decode() + f"{big_sha}  /usr/share/data/big\n"
                        + motd.decode() + "changed in the container\n"
                        + "motd\nos-release\n" + HOSTNAME + "\n"), p.stdout
    assert tree(os.path.join(layer, "upper")) == {
        "etc": "dir",
        "etc/motd": (motd + b"changed in the container\n", ws["uid"]),
        "etc/issue": ("whiteout",),
        "root": "dir",
        "root/new": (b"written in the container\n", ws["uid"]),
    }
    assert_same_tree(before, after)
    assert "root/new" not in after and "etc/issue" in after
    assert after["etc/motd"]["sha256"] == hashlib.sha256(motd).hexdigest()
    assert after["usr/share/data/big"]["sha256"] == big_sha


def test_container_reads_tampered_object_as_eio(container_ws):
    """A byte flipped in the store's object of the data file (fresh mount,
    so no page cache holds the good data) gives EIO inside the container
    too: reading it fails, and so does appending to it, as the copy-up to
    the writable layer reads the object, so nothing of it reaches the upper
    directory.  The other files of the image still read, and the daemon
    counted the failed block."""
    ws = container_ws
    rootfs, layer = ws["rootfs"], os.path.join(ws["home"], "layer-tampered")
    stats = os.path.join(ws["home"], "stats-tampered")
    digest = user_run(ws, [tool("composefs-info"), "measure-file",
                           "rootfs/usr/share/data/big"]).stdout.split()[0]
    obj = os.path.join(ws["objs"], digest[:2], digest[2:])
    assert os.path.getsize(obj) == 3000000
    command = ("cat /etc/os-release;"
               " sha256sum /usr/share/data/big; echo \"sha256sum exit $?\";"
               " echo more >> /usr/share/data/big; echo \"append exit $?\"")
    flip_byte(obj, 1234567)
    try:
        with user_mount(ws, options=[f"stats_file={stats}"]):
            p = run_container(ws, layer, command)
    finally:
        flip_byte(obj, 1234567)
    assert not mounted(ws["mnt"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == (read(os.path.join(rootfs, "etc/os-release")).decode()
                        + "sha256sum exit 1\nappend exit 1\n"), (p.stdout, p.stderr)
    eio = os.strerror(errno.EIO)
    lines = p.stderr.splitlines()
    assert any(l.startswith("sha256sum:") and "/usr/share/data/big" in l and eio in l
               for l in lines), p.stderr
    assert any(l.startswith("/bin/sh:") and "/usr/share/data/big" in l and eio in l
               for l in lines), p.stderr
    upper = tree(os.path.join(layer, "upper"))
    assert all(v == "dir" for v in upper.values()), upper
    assert read_stats(stats)["cas_blocks_failed"] >= 1
