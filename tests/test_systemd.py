# SPDX-License-Identifier: LGPL-2.1-or-later
"""The systemd units and fstab lines under a real systemd.

A minimal Debian root is made with mmdebstrap (once; the tarball is kept in
/var/tmp), the project is put in it with `meson install --destdir`, and it
is booted with systemd-nspawn.  Inside, the oneshot cfs-check.service runs
tests/systemd/check.sh, which starts and stops the installed units and the
fstab mounts, writes what it saw to /results and powers the container off;
the assertions are here."""
import hashlib
import os
import shutil
import stat
import subprocess

import pytest

from conftest import BUILD, REPO, flip_byte, run, tool

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not shutil.which("systemd-nspawn") or not shutil.which("mmdebstrap"),
                       reason="needs systemd-nspawn and mmdebstrap (scripts/install-deps.sh)"),
]

PACKAGES = ["systemd", "systemd-sysv", "dbus", "fuse3", "libfuse3-3", "libssl3", "liburing2",
            "libfsverity0", "libasan8", "libubsan1", "passwd", "util-linux", "procps",
            "libpam-systemd"]
CACHE = "/var/tmp/composefs-fuse-tests"
USER = "cfsuser"
USER_UID = 1500


def debian_root():
    """A tarball of a bootable minimal Debian root, made once."""
    key = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:16]
    tar = os.path.join(CACHE, f"nspawn-root-{key}.tar")
    if not os.path.exists(tar):
        os.makedirs(CACHE, exist_ok=True)
        tmp = tar + ".part"
        run(["mmdebstrap", "--variant=minbase", "--format=tar", "--include=" + ",".join(PACKAGES),
             "bookworm", tmp, "http://deb.debian.org/debian"], timeout=900)
        os.rename(tmp, tar)
    return tar


def object_of(objects, path):
    digest = run([tool("composefs-info"), "measure-file", path]).stdout.decode().split()[0]
    return os.path.join(objects, digest[:2], digest[2:])


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    """Boot the container once; return (facts, results directory)."""
    top = tmp_path_factory.mktemp("nspawn")
    root, results = top / "root", top / "results"
    root.mkdir()
    results.mkdir()
    run(["tar", "-C", root, "-xpf", debian_root()], timeout=300)
    run(["meson", "install", "-C", BUILD, "--destdir", root, "--no-rebuild", "--quiet"],
        timeout=300)
    run(["chroot", root, "useradd", "-m", "-u", USER_UID, "-s", "/bin/sh", USER])
    home = root / "home" / USER

    # The image: a file of several blocks, a tampered one, small files.
    src = top / "src"
    (src / "dir").mkdir(parents=True)
    data = os.urandom((1 << 20) + 1234)
    (src / "data").write_bytes(data)
    (src / "bad").write_bytes(os.urandom(300 << 10))
    (src / "dir" / "small").write_text("small\n")
    objects = root / "srv" / "objects"
    digest = run([tool("mkcomposefs"), f"--digest-store={objects}", "--print-digest", src,
                  root / "srv" / "demo.cfs"]).stdout.decode().split()[0]
    # A user copy of the image and store, without stored trees, for the
    # fstab "user" mount: its trees go to the user's own cache.
    shutil.copy(root / "srv" / "demo.cfs", home / "demo.cfs")
    shutil.copytree(objects, home / "objects", ignore=shutil.ignore_patterns(".cfs-trees"))
    flip_byte(object_of(objects, src / "bad"), 150 << 10)
    for d in ("srv/mnt", "srv/mnt-bad", "srv/fstab", "srv/unit"):
        (root / d).mkdir()
    for d in ("mnt", "fstab"):
        (home / d).mkdir()

    write(root / "etc/composefs-fuse/demo.conf",
          "IMAGE=/srv/demo.cfs\nMOUNTPOINT=/srv/mnt\n"
          f"OPTIONS=-o basedir=/srv/objects,digest={digest}\n")
    write(root / "etc/composefs-fuse/bad.conf",
          "IMAGE=/srv/demo.cfs\nMOUNTPOINT=/srv/mnt-bad\n"
          f"OPTIONS=-o basedir=/srv/objects,digest={'0' * 64}\n")
    write(home / ".config/composefs-fuse/demo.conf",
          f"IMAGE=/srv/demo.cfs\nMOUNTPOINT=/home/{USER}/mnt\n"
          f"OPTIONS=-o basedir=/srv/objects,digest={digest}\n")
    with open(root / "etc/fstab", "a") as f:
        f.write("/srv/demo.cfs /srv/fstab fuse.composefs-fuse noauto,basedir=/srv/objects 0 0\n")
        f.write(f"/home/{USER}/demo.cfs /home/{USER}/fstab fuse.composefs-fuse "
                f"noauto,user,basedir=/home/{USER}/objects 0 0\n")
    write(root / "etc/systemd/system/srv-unit.mount",
          "[Unit]\nDescription=composefs image demo\n"
          "[Mount]\nWhat=/srv/demo.cfs\nWhere=/srv/unit\nType=fuse.composefs-fuse\n"
          f"Options=basedir=/srv/objects,digest={digest}\n")
    run(["chroot", root, "chown", "-R", f"{USER}:{USER}", f"/home/{USER}"])

    shutil.copy(os.path.join(REPO, "tests/systemd/check.sh"), root / "srv/check.sh")
    os.chmod(root / "srv/check.sh", 0o755)
    write(root / "etc/systemd/system/cfs-check.service",
          "[Unit]\nDescription=composefs-fuse checks\n"
          "SuccessAction=poweroff-force\nFailureAction=poweroff-force\n"
          "[Service]\nType=oneshot\nExecStart=/srv/check.sh\nTimeoutStartSec=300\n"
          "StandardOutput=journal+console\n"
          "[Install]\nWantedBy=multi-user.target\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    os.symlink("/etc/systemd/system/cfs-check.service", wants / "cfs-check.service")
    # A /dev/fuse of the container's own, usable by its ordinary user,
    # so that the host's stays as it is.
    fuse = top / "fuse"
    os.mknod(fuse, stat.S_IFCHR | 0o666, os.makedev(10, 229))
    os.chmod(fuse, 0o666)

    p = subprocess.run(["systemd-nspawn", "-q", "-D", root, "-b", "--register=no",
                        "--keep-unit", f"--bind={fuse}:/dev/fuse", f"--bind={results}:/results",
                        "--console=pipe"], capture_output=True, timeout=600)
    console = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    facts = {}
    if (results / "facts").exists():
        for line in (results / "facts").read_text().splitlines():
            k, _, v = line.partition("=")
            facts[k] = v
    assert facts.get("done") == "yes", \
        f"the checks did not finish\n{console[-4000:]}\n{facts}\n" + \
        ((results / "trace").read_text()[-4000:] if (results / "trace").exists() else "")
    facts["expected"] = hashlib.sha256(data).hexdigest()
    yield facts, results
    shutil.rmtree(root, ignore_errors=True)  # results stay, for a failure's reader


def test_system_unit_mount_is_the_hosts_and_everyones(booted):
    """The system unit is ready only once mounted, in the host's mount
    namespace (visible outside the service), readable by another user,
    hardened without a namespace of its own, and says what it serves."""
    f, res = booted
    assert f["sys_start_rc"] == "0"
    assert f["sys_mounts_when_ready"] == "1"
    assert f["sys_same_mount_ns"] == "yes"
    assert f["sys_read_root"] == f["expected"]
    assert f["sys_read_other_user"] == f["expected"]
    assert f["sys_status"].startswith("serving"), f["sys_status"]
    # Its trees go to the unit's CacheDirectory= (the tampered object had
    # none stored), not to root's home.
    assert "tree cache /var/cache/composefs-fuse," in (res / "sys.log").read_text()
    # CAP_SYS_ADMIN (21), CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2) only
    assert int(f["sys_caps"], 16) == (1 << 21) | (1 << 1) | (1 << 2), f["sys_caps"]
    exposure = float(f["sys_exposure"])
    sec = (res / "security.txt").read_text()
    assert exposure <= 5.0, sec
    for setting in ("RestrictNamespaces=", "MemoryDenyWriteExecute=", "SystemCallFilter=",
                    "RestrictAddressFamilies=~AF_(INET|INET6)", "CapabilityBoundingSet=~CAP_SYS_PTRACE"):
        line = [l for l in sec.splitlines() if setting in l]
        assert line and line[0].lstrip().startswith("✓"), (setting, line)


def test_system_unit_logs_a_corrupt_object_at_error_priority(booted):
    """journalctl -p err shows the tampered object's error, naming the file."""
    f, res = booted
    assert f["sys_bad_read_rc"] != "0"
    assert "Input/output error" in (res / "bad-read.err").read_text()
    err = (res / "sys-err.log").read_text()
    assert "/bad" in err and "fs-verity" in err, err


def test_system_unit_restarts_after_kill_with_one_mount(booted):
    """After kill -9 of the daemon, Restart=on-failure brings it back on
    the dead mount, replaced: exactly one working mount; stop unmounts."""
    f, res = booted
    assert f["sys_restarted"] == "0", (res / "sys.log").read_text()
    assert f["sys_mounts_after_restart"] == "1"
    assert f["sys_read_after_restart"] == f["expected"]
    assert f["sys_stop_rc"] == "0"
    assert f["sys_mounts_after_stop"] == "0"


def test_system_unit_that_cannot_mount_fails_to_start(booted):
    """A wrong digest= fails the start (never ready), mounts nothing and
    says why at error priority."""
    f, res = booted
    assert f["bad_start_rc"] != "0"
    assert f["bad_mounts"] == "0"
    assert "digest" in (res / "bad-err.log").read_text()


def test_user_unit_serves_the_users_mount(booted):
    """The user unit in the user's own manager: ready once mounted,
    readable, restarted after kill -9 with exactly one mount (the watchdog
    removed the dead one), unmounted on stop."""
    f, res = booted
    log = (res / "user.log").read_text()
    assert f["user_manager_rc"] == "0", (res / "user-manager.log").read_text()
    assert f["user_start_rc"] == "0", log
    assert f["user_mounts_when_ready"] == "1"
    assert f["user_read"] == f["expected"]
    assert f["user_status"].startswith("serving"), f["user_status"]
    assert f["user_restarted"] == "0", log
    assert f["user_mounts_after_restart"] == "1"
    assert f["user_read_after_restart"] == f["expected"]
    assert f["user_stop_rc"] == "0"
    assert f["user_mounts_after_stop"] == "0"


def test_mount_unit(booted):
    """A .mount unit of type fuse.composefs-fuse mounts, serves and, on
    stop, unmounts with no daemon left behind."""
    f, _ = booted
    assert f["mount_unit_start_rc"] == "0"
    assert f["mount_unit_mounts"] == "1"
    assert f["mount_unit_read"] == f["expected"]
    assert f["mount_unit_stop_rc"] == "0"
    assert f["mount_unit_mounts_after_stop"] == "0"
    assert f["mount_unit_daemons_left"] == "0"


def test_fstab_root_and_user_lines(booted):
    """fstab: root mounts and unmounts its line (source shown as an
    absolute path); the user mounts and unmounts a "user" line, the mount
    is the user's and its trees go to the user's own cache, not root's."""
    f, res = booted
    assert f["fstab_root_mount_rc"] == "0"
    assert f["fstab_root_read"] == f["expected"]
    assert f["fstab_root_source"] == "/srv/demo.cfs"
    assert f["fstab_root_umount_rc"] == "0"
    assert f["fstab_root_mounts_after"] == "0"
    assert f["fstab_user_mount_rc"] == "0", (res / "fstab-user.err").read_text()
    assert f["fstab_user_owner"] == f"user_id={USER_UID}"
    assert f["fstab_user_read"] == f["expected"]
    assert f["fstab_user_umount_rc"] == "0"
    assert f["fstab_user_mounts_after"] == "0"
    assert int(f["fstab_user_trees"]) >= 1
    assert f["fstab_user_trees_owner"].split() == [USER]
    assert f["root_trees_after_user"] == f["root_trees_before_user"]
