#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Side-by-side benchmark of composefs-fuse against the kernel's composefs
mount (erofs + overlayfs, the reference), and optionally upstream's cfs-fuse
and squashfuse_ll, on the same images and object stores, in one run.

Usage (as root, from anywhere):

    bench/bench.py [--build DIR] [--sets doc,share,big] [--workloads LIST]
                   [--runs N] [--big-mib MIB] [--workdir DIR] [--rebuild]
                   [--daemon-opts OPTS] [--label NAME]
                   [--ours-extra LABEL OPTS]... [--cfs-fuse PATH]
                   [--squashfuse PATH] [--json FILE]

    bench/bench.py --build build --sets doc --runs 1
    bench/bench.py --sets big --big-mib 64 --workloads seq,rand4k,mount
    bench/bench.py --sets doc --ours-extra 'verity=off' verity=off \\
                   --cfs-fuse /path/to/upstream/build/tools/composefs-fuse

Implementations (one column each, measured in an interleaved order within
every repetition, so that drift hits all of them alike):

    kernel          mount -t erofs -o loop,ro IMG META; mount -t overlay -o
                    ro,lowerdir=META::STORE,metacopy=on,redirect_dir=on
    ours            BUILD/daemon/composefs-fuse -f -o basedir=STORE,digest=HEX,
                    tree_cache=DIR,stats_file=FILE[,--daemon-opts] IMG MNT
                    (named by --label, default "composefs-fuse")
    --ours-extra LABEL OPTS
                    one more variant of ours, a column named LABEL, run with OPTS
                    instead of --daemon-opts (repeatable; OPTS may be ''), e.g.
                    --ours-extra 'verity=off' verity=off \\
                    --ours-extra 'pread, 1 thread' io=pread,threads=1
    --cfs-fuse PATH upstream's FUSE daemon: PATH -f -o source=IMG,basedir=STORE MNT
    --squashfuse PATH
                    squashfuse_ll -f IMG.sqfs MNT, on a squashfs image made by
                    mksquashfs (uncompressed by default, see --mksquashfs-opts)
                    from the kernel mount of the same composefs image

Data sets (--sets, built once into --workdir and reused; --rebuild redoes them):

    doc       /usr/share/doc
    share     /usr/share
    big       one generated file of --big-mib MiB of random data
    selinux   /usr/share/doc with security.selinux on every entry (the doc
              image's dump with the xattr added, rebuilt with --from-file;
              the object store is doc's)

Workloads (--workloads, default all that apply; each cold and warm):

    read      read every regular file of the tree (one process, 1 MiB reads)
    lslR      ls -lR MNT > /dev/null
    find      find MNT > /dev/null
    seq       sequential read of the big file (1 MiB reads)       [big only]
    rand4k    fio 4 KiB random reads (psync) of the big file, MB/s [big only]
              (cold: --io_size=64M --invalidate=1; warm: --time_based for
              2 s, --invalidate=0, after an untimed full read of the file)
    mount     from starting the mount until os.stat(MNT/first entry) works

Cold: a fresh mount (ours also with an emptied tree cache directory), then
sync and drop_caches, then the timed pass.  Warm: the same mount after one
pass (the cold pass; for rand4k an extra untimed sequential read of the
file).  For mount, cold drops the caches before starting the mount and warm
mounts again right after the cold mount was unmounted.  Reported: medians of --runs
passes, and the ratio of each implementation to the kernel in the same run
(time / kernel time, lower is better; for rand4k bandwidth / kernel
bandwidth, higher is better).  ours' daemon counters (stats_file, read by
SIGUSR1 before and after each timed pass) and the peak RSS (VmHWM) of every
FUSE daemon are printed below the tables.  The markdown report goes to
stdout, progress to stderr, everything to --json FILE.

Everything this script mounts is unmounted on exit, on error and on Ctrl-C;
it refuses to start while something is mounted under --workdir.
"""
import argparse
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELINUX_XATTR = "security.selinux=system_u:object_r:usr_t:s0"
ALL_SETS = ("doc", "share", "big", "selinux")
ALL_WORKLOADS = ("read", "lslR", "find", "seq", "rand4k", "mount")
TREE_WORKLOADS = ("read", "lslR", "find", "mount")
FILE_WORKLOADS = ("seq", "rand4k", "mount")
C_ENV = dict(os.environ, LC_ALL="C")

# The reader run as a child process for "read" and "seq": it times itself,
# so that the interpreter's start is not measured.
READER = r'''
import json, os, sys, time
mode, root = sys.argv[1], sys.argv[2]
buf = bytearray(1 << 20)
st = {"files": 0, "bytes": 0, "errors": 0, "first_error": None}
def err(p, e):
    st["errors"] += 1
    if st["first_error"] is None:
        st["first_error"] = "%s: %s" % (p, e)
def readfile(p):
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        return err(p, e)
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            st["bytes"] += n
        st["files"] += 1
    except OSError as e:
        err(p, e)
    finally:
        os.close(fd)
t0 = time.perf_counter()
if mode == "file":
    readfile(root)
else:
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError as e:
            err(d, e)
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    readfile(e.path)
st["elapsed"] = time.perf_counter() - t0
print(json.dumps(st))
'''


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def run(cmd, check=True, timeout=None, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run([str(c) for c in cmd], text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{shlex.join(str(c) for c in cmd)} exited {p.returncode}: "
                         f"{(p.stderr or '').strip()[-2000:]}")
    return p


def slug(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def empty_dir(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    os.makedirs(path)


def unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts_under(root):
    """Mount points equal to or below ROOT."""
    root = os.path.realpath(root)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = unescape_mountinfo(line.split()[4])
            if mp == root or mp.startswith(root + "/"):
                out.append(mp)
    return out


def loops_under(root):
    """(device, backing file) of loop devices whose backing file is below ROOT."""
    root = os.path.realpath(root)
    out = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                back = f.read().strip()
        except OSError:
            continue
        if back.startswith(root + "/"):
            out.append((f"/dev/{name}", back))
    return out


def vmhwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# Data sets: images and stores, built once and reused.

class Dataset:
    def __init__(self, name, desc, key):
        self.name, self.desc, self.key = name, desc, key
        self.img = self.store = self.digest = self.sqfs = None
        self.probe = None       # relative path stat()ed by the mount workload
        self.big = None         # relative path of the big file (file sets)
        self.info = {}


def dump_summary(info_tool, img):
    """Entries, regular files, bytes of regular files, first top-level entry."""
    p = run([info_tool, "dump", img])
    entries = files = nbytes = 0
    first = None
    for line in p.stdout.splitlines():
        f = line.split(" ")
        if len(f) < 11:
            continue
        entries += 1
        if f[0] != "/" and first is None and "\\" not in f[0] and f[0].count("/") == 1:
            first = f[0][1:]
        if f[2].startswith("@"):
            continue
        if int(f[2], 8) & 0o170000 == 0o100000:
            files += 1
            nbytes += int(f[1])
    return {"entries": entries, "files": files, "bytes": nbytes, "probe": first}


class Builder:
    def __init__(self, args):
        self.args = args
        self.work = args.workdir
        self.mkcfs = os.path.join(args.build, "cli", "mkcomposefs")
        self.info = os.path.join(args.build, "cli", "composefs-info")
        self.built = {}

    def set_dir(self, key):
        return os.path.join(self.work, "sets", key)

    def store_dir(self, key):
        return os.path.join(self.work, "stores", key)

    @staticmethod
    def key_for(src):
        h = hashlib.sha256(src.encode()).hexdigest()[:8]
        return f"{slug(src)}-{h}"

    def load_manifest(self, d):
        try:
            with open(os.path.join(d, "manifest.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write_manifest(self, d, m):
        tmp = os.path.join(d, "manifest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(m, f, indent=1)
        os.rename(tmp, os.path.join(d, "manifest.json"))

    def from_manifest(self, ds, d, m):
        ds.img, ds.store, ds.digest = os.path.join(d, "img.cfs"), m["store"], m["digest"]
        ds.probe, ds.info = m["summary"]["probe"], m["summary"]
        ds.info["source"] = m["source"]
        return ds

    def build_dir_set(self, name, desc, src, big=None):
        """Image and store of the directory SRC (key: its path)."""
        key = self.key_for(src)
        d, store = self.set_dir(key), self.store_dir(key)
        ds = Dataset(name, desc, key)
        ds.big = big
        m = self.load_manifest(d)
        rebuild = self.args.rebuild and key not in self.built
        if m and not rebuild and os.path.isfile(os.path.join(d, "img.cfs")) and os.path.isdir(store):
            log(f"[{name}] reusing {d} (built {m['built']}; --rebuild to redo)")
            return self.from_manifest(ds, d, m)
        log(f"[{name}] building image and store of {src} in {d}")
        for p in (d, store):
            if os.path.exists(p):
                shutil.rmtree(p)
        os.makedirs(d)
        tmp = os.path.join(d, "img.cfs.tmp")
        t0 = time.perf_counter()
        p = run([self.mkcfs, f"--digest-store={store}", "--print-digest", src, tmp])
        el = time.perf_counter() - t0
        digest = p.stdout.split()[0]
        os.rename(tmp, os.path.join(d, "img.cfs"))
        m = {"source": src, "store": store, "digest": digest, "mkcomposefs": self.mkcfs,
             "mkcomposefs_seconds": round(el, 3), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
             "summary": dump_summary(self.info, os.path.join(d, "img.cfs"))}
        self.write_manifest(d, m)
        self.built[key] = True
        log(f"[{name}] mkcomposefs --digest-store took {el:.2f} s, digest {digest}")
        return self.from_manifest(ds, d, m)

    def big_source(self):
        mib = self.args.big_mib
        src = os.path.join(self.work, "src", f"big-{mib}M")
        f = os.path.join(src, "big.bin")
        if os.path.isfile(f) and os.path.getsize(f) == mib << 20:
            return src
        log(f"[big] generating {mib} MiB of random data in {f}")
        if os.path.exists(src):
            shutil.rmtree(src)
        os.makedirs(src)
        with open(f + ".tmp", "wb") as out:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
        os.rename(f + ".tmp", f)
        return src

    def selinux_set(self, doc):
        key = doc.key + "+selinux"
        d = self.set_dir(key)
        ds = Dataset("selinux", f"/usr/share/doc with {SELINUX_XATTR} on every entry", key)
        m = self.load_manifest(d)
        rebuild = (self.args.rebuild and key not in self.built) or self.built.get(doc.key)
        if m and not rebuild and m.get("base_digest") == doc.digest and \
                os.path.isfile(os.path.join(d, "img.cfs")):
            log(f"[selinux] reusing {d}")
            return self.from_manifest(ds, d, m)
        log(f"[selinux] building {d} from the dump of {doc.img}")
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        p = run([self.info, "dump", doc.img])
        lines = []
        for line in p.stdout.splitlines():
            f = line.split(" ")
            # Hard links share their target's inode, and so its xattrs.
            if len(f) >= 11 and not f[2].startswith("@") and \
                    not any(x.startswith("security.selinux=") for x in f[11:]):
                line += " " + SELINUX_XATTR
            lines.append(line)
        dump = os.path.join(d, "dump.txt")
        with open(dump, "w") as out:
            out.write("\n".join(lines) + "\n")
        tmp = os.path.join(d, "img.cfs.tmp")
        p = run([self.mkcfs, "--from-file", "--print-digest", dump, tmp])
        os.rename(tmp, os.path.join(d, "img.cfs"))
        m = {"source": doc.info["source"] + " (+security.selinux)", "store": doc.store,
             "digest": p.stdout.split()[0], "base_digest": doc.digest, "mkcomposefs": self.mkcfs,
             "built": time.strftime("%Y-%m-%d %H:%M:%S"),
             "summary": dump_summary(self.info, os.path.join(d, "img.cfs"))}
        self.write_manifest(d, m)
        self.built[key] = True
        return self.from_manifest(ds, d, m)

    def dataset(self, name):
        if name == "doc":
            return self.build_dir_set("doc", "/usr/share/doc", "/usr/share/doc")
        if name == "share":
            return self.build_dir_set("share", "/usr/share", "/usr/share")
        if name == "big":
            src = self.big_source()
            return self.build_dir_set("big", f"one {self.args.big_mib} MiB file of random data",
                                      src, big="big.bin")
        if name == "selinux":
            return self.selinux_set(self.dataset("doc"))
        raise BenchError(f"unknown set {name}")

    def squashfs(self, ds, kernel):
        """img.sqfs next to the composefs image, made by mksquashfs from the
        kernel mount of that image, so that it holds the same tree."""
        d = self.set_dir(ds.key)
        out = os.path.join(d, "img.sqfs")
        stamp = os.path.join(d, "img.sqfs.digest")
        want = f"{ds.digest} {self.args.mksquashfs_opts}"
        try:
            with open(stamp) as f:
                if f.read().strip() == want and os.path.isfile(out):
                    ds.sqfs = out
                    return out
        except OSError:
            pass
        log(f"[{ds.name}] building {out} with mksquashfs {self.args.mksquashfs_opts}")
        mnt = kernel.mount(ds)
        try:
            run(["mksquashfs", mnt, out + ".tmp", "-noappend", "-no-progress", "-quiet"]
                + shlex.split(self.args.mksquashfs_opts))
        finally:
            kernel.umount()
        os.rename(out + ".tmp", out)
        with open(stamp, "w") as f:
            f.write(want + "\n")
        ds.sqfs = out
        return out


# --------------------------------------------------------------------------
# Implementations.

class Impl:
    kind = "?"
    fuse = False

    def __init__(self, label, work):
        self.label, self.slug, self.work = label, slug(label), work
        self.mnt = None
        self.proc = None

    def supports(self, ds):
        return True

    def prepare_cold(self):
        pass

    def stats(self):
        return None

    def pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def mounted(self):
        return self.mnt is not None


class Kernel(Impl):
    kind = "kernel"

    def __init__(self, work):
        super().__init__("kernel", work)
        top = os.path.join(work, "mnt", "kernel")
        self.meta, self.top = os.path.join(top, "meta"), os.path.join(top, "mnt")
        self.layers = []

    def start(self, ds):
        os.makedirs(self.meta, exist_ok=True)
        os.makedirs(self.top, exist_ok=True)
        self.mnt = self.top
        run(["mount", "-t", "erofs", "-o", "loop,ro", ds.img, self.meta])
        self.layers.append(self.meta)
        run(["mount", "-t", "overlay", "-o",
             f"ro,lowerdir={self.meta}::{ds.store},metacopy=on,redirect_dir=on",
             "overlay", self.top])
        self.layers.append(self.top)
        return self.top

    def wait(self, probe=None, timeout=60):
        pass

    def mount(self, ds):
        try:
            self.start(ds)
        except BaseException:
            self.umount()
            raise
        return self.mnt

    def umount(self):
        errs = []
        while self.layers:
            m = self.layers.pop()
            p = run(["umount", m], check=False)
            if p.returncode != 0:
                errs.append(p.stderr.strip())
                run(["umount", "-l", m], check=False)
        self.mnt = None
        if errs:
            log(f"warning: kernel unmount needed umount -l: {'; '.join(errs)}")


class Fuse(Impl):
    fuse = True

    def __init__(self, label, work, binary):
        super().__init__(label, work)
        self.binary = binary
        self.dir = os.path.join(work, "mnt", self.slug)
        self.logfile = os.path.join(work, "logs", self.slug + ".log")
        self.exit_problems = []

    def argv(self, ds, mnt):
        raise NotImplementedError

    def start(self, ds):
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.logfile), exist_ok=True)
        argv = self.argv(ds, self.dir)
        self.log = open(self.logfile, "a")
        self.log.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n")
        self.log.flush()
        self.log_pos = self.log.tell()
        self.mnt = self.dir
        # A session of its own: Ctrl-C reaches this script only, which then
        # unmounts in order.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, start_new_session=True)
        return self.dir

    def log_tail(self):
        """The last lines the daemon logged since it was started, on one line."""
        try:
            with open(self.logfile) as f:
                f.seek(getattr(self, "log_pos", 0))
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:] or "(nothing logged)"

    def wait(self, probe=None, timeout=60):
        """Until the mount is up (or PROBE below it can be stat()ed)."""
        deadline = time.monotonic() + timeout
        while True:
            if probe is not None:
                try:
                    os.stat(os.path.join(self.dir, probe))
                    return
                except OSError:
                    pass
            elif os.path.ismount(self.dir):
                return
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.cleanup_proc()
                raise BenchError(f"{self.label} exited {rc} before mounting: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label}: not mounted after {timeout} s")
            time.sleep(0.0005 if probe is not None else 0.005)

    def mount(self, ds):
        self.start(ds)
        try:
            self.wait()
        except BaseException:
            self.umount()
            raise
        return self.mnt

    def cleanup_proc(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.mnt = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def umount(self):
        if self.proc is None:
            return
        if os.path.ismount(self.dir):
            p = run(["fusermount3", "-u", self.dir], check=False)
            if p.returncode != 0:
                run(["umount", self.dir], check=False)
        try:
            rc = self.proc.wait(timeout=30)
            if rc != 0:
                self.exit_problems.append(f"exited {rc}: {self.log_tail()}")
        except subprocess.TimeoutExpired:
            self.exit_problems.append("did not exit within 30 s after unmount; killed")
        if os.path.ismount(self.dir):
            run(["umount", "-l", self.dir], check=False)
        self.cleanup_proc()


class Ours(Fuse):
    kind = "ours"

    def __init__(self, label, work, binary, opts):
        super().__init__(label, work, binary)
        self.opts = [o for o in opts.split(",") if o] if opts else []
        keys = {o.split("=", 1)[0] for o in self.opts}
        self.tree_cache = None
        if "tree_cache" not in keys:
            self.tree_cache = os.path.join(work, "treecache", self.slug)
            self.opts.append(f"tree_cache={self.tree_cache}")
        self.stats_path = None
        if "stats_file" in keys:
            self.stats_path = [o.split("=", 1)[1] for o in self.opts if o.startswith("stats_file=")][-1]
        elif supports_option(binary, "stats_file"):
            self.stats_path = os.path.join(work, "stats", self.slug + ".txt")
            self.opts.append(f"stats_file={self.stats_path}")
        self.user_opts = opts or ""

    def argv(self, ds, mnt):
        o = [f"basedir={ds.store}", f"digest={ds.digest}"] + self.opts
        return [self.binary, "-f", "-o", ",".join(o), ds.img, mnt]

    def prepare_cold(self):
        if self.tree_cache:
            empty_dir(self.tree_cache)
        if self.stats_path:
            os.makedirs(os.path.dirname(self.stats_path), exist_ok=True)

    def stats(self):
        pid = self.pid()
        if not self.stats_path or not pid:
            return None
        # SIGUSR1 kills a daemon that has not yet blocked it (its stats
        # thread starts a moment after the mount appears): wait for that.
        deadline = time.monotonic() + 5
        while not sigusr1_blocked(pid):
            if time.monotonic() > deadline or self.pid() is None:
                return None
            time.sleep(0.002)
        try:
            os.unlink(self.stats_path)
        except FileNotFoundError:
            pass
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not os.path.exists(self.stats_path):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        out = {}
        with open(self.stats_path) as f:
            for line in f:
                k, _, v = line.strip().partition(" ")
                out[k] = int(v) if v.isdigit() else v
        return out


class CfsFuse(Fuse):
    kind = "cfs-fuse"

    def argv(self, ds, mnt):
        return [self.binary, "-f", "-o", f"source={ds.img},basedir={ds.store}", mnt]


class Squashfuse(Fuse):
    kind = "squashfuse"

    def supports(self, ds):
        return ds.sqfs is not None

    def argv(self, ds, mnt):
        return [self.binary, "-f", ds.sqfs, mnt]


def sigusr1_blocked(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))
    except (OSError, ValueError):
        pass
    return False


def supports_option(binary, name):
    p = run([binary, "--help"], check=False)
    return name in (p.stdout or "") + (p.stderr or "")


# --------------------------------------------------------------------------
# Workloads.  Each pass returns {"value", "unit", "errors", "first_error", ...}.

def reader(mode, path, timeout):
    p = run([sys.executable, "-c", READER, mode, path], timeout=timeout)
    r = json.loads(p.stdout)
    return {"value": r["elapsed"], "unit": "s", "errors": r["errors"],
            "first_error": r["first_error"], "files": r["files"], "bytes": r["bytes"]}


def command(argv, timeout):
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=C_ENV, timeout=timeout)
    el = time.perf_counter() - t0
    err = p.stderr.strip().splitlines()
    return {"value": el, "unit": "s", "errors": 0 if p.returncode == 0 else 1,
            "first_error": (f"exit {p.returncode}: " + (err[0] if err else "")) if p.returncode else None}


def fio(path, size, cold, args):
    # Warm reads come from the page cache: --io_size would be over in a few
    # milliseconds, below fio's 1 ms resolution, so a warm pass is timed.
    argv = ["fio", "--name=r", f"--filename={path}", "--rw=randread", "--bs=4k",
            f"--size={size}", "--ioengine=psync", "--readonly", "--output-format=json"]
    if cold:
        argv += [f"--runtime={args.fio_runtime}", "--time_based=0",
                 f"--io_size={args.fio_io_size}", "--invalidate=1"]
    else:
        argv += [f"--runtime={args.fio_warm_seconds}", "--time_based=1", "--invalidate=0"]
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=args.timeout)
    el = time.perf_counter() - t0
    try:
        j = json.loads(p.stdout[p.stdout.index("{"):])
        job = j["jobs"][0]
        bw = job["read"]["bw_bytes"] / 1e6
        errs = job.get("error", 0)
    except (ValueError, KeyError, IndexError):
        bw, errs = 0.0, 1
    if p.returncode != 0:
        errs = errs or 1
    return {"value": bw, "unit": "MB/s", "wall": el, "errors": 1 if errs else 0,
            "first_error": (p.stderr.strip()[:300] or f"fio exit {p.returncode}") if errs else None}


def run_pass(wl, ds, mnt, cold, args):
    if wl == "read":
        return reader("tree", mnt, args.timeout)
    if wl == "lslR":
        return command(["ls", "-lR", mnt], args.timeout)
    if wl == "find":
        return command(["find", mnt], args.timeout)
    big = os.path.join(mnt, ds.big)
    if wl == "seq":
        r = reader("file", big, args.timeout)
        r["MB/s"] = r["bytes"] / r["value"] / 1e6 if r["value"] else 0
        return r
    if wl == "rand4k":
        return fio(big, ds.info["bytes"], cold, args)
    raise BenchError(wl)


def stats_delta(before, after):
    if not after:
        return None
    out = {}
    for k, v in after.items():
        if isinstance(v, int) and k != "cas_lru_bytes" and before and isinstance(before.get(k), int):
            out[k] = v - before[k]
        else:
            out[k] = v
    return out


def measure(ds, wl, impl, args, res):
    """One repetition of workload WL on IMPL: a cold and a warm pass."""
    cell = res.setdefault(wl, {})

    def record(mode, r):
        c = cell.setdefault(mode, {}).setdefault(impl.label, {"values": [], "passes": []})
        c["passes"].append(r)
        if not r.get("errors"):
            c["values"].append(r["value"])
        tag = f"{r['value']:.4g} {r['unit']}" + (f" (ERROR {r.get('first_error')})" if r.get("errors") else "")
        log(f"  [{ds.name}] {wl:<6} {mode:<4} {impl.label:<20} {tag}")

    if wl == "mount":
        for mode in ("cold", "warm"):
            if mode == "cold":
                impl.prepare_cold()
                drop_caches()
            t0 = time.perf_counter()
            try:
                impl.start(ds)
                impl.wait(probe=ds.probe)
                os.stat(os.path.join(impl.mnt, ds.probe))
                r = {"value": time.perf_counter() - t0, "unit": "s", "errors": 0}
            except (BenchError, OSError) as e:
                r = {"value": 0.0, "unit": "s", "errors": 1, "first_error": str(e)}
            finally:
                if impl.mounted():
                    impl.umount()
            record(mode, r)
        return

    impl.prepare_cold()
    try:
        mnt = impl.mount(ds)
    except BenchError as e:
        for mode in ("cold", "warm"):
            record(mode, {"value": 0.0, "unit": "s", "errors": 1, "first_error": str(e)})
        return
    try:
        for mode in ("cold", "warm"):
            before = None
            try:
                if mode == "warm" and wl == "rand4k":
                    # Untimed: bring the whole file in (fio reads a part only).
                    reader("file", os.path.join(mnt, ds.big), args.timeout)
                before = impl.stats()
                if mode == "cold":
                    drop_caches()
                r = run_pass(wl, ds, mnt, mode == "cold", args)
            except (subprocess.TimeoutExpired, BenchError, ValueError) as e:
                r = {"value": 0.0, "unit": "s", "errors": 1, "first_error": str(e)}
            d = stats_delta(before, impl.stats())
            if d:
                r["daemon_stats"] = d
            if impl.fuse and impl.pid():
                r["vmhwm_kib"] = vmhwm_kib(impl.pid())
            record(mode, r)
    finally:
        impl.umount()


# --------------------------------------------------------------------------
# Report.

def fmt_time(v):
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def fmt_val(v, unit):
    return f"{v:.0f}" if unit == "MB/s" and v >= 100 else f"{v:.1f}" if unit == "MB/s" else fmt_time(v)


def human_bytes(n):
    for u in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or u == "GiB":
            return f"{n:.1f} {u}" if u != "B" else f"{n} B"
        n /= 1024


def summarize(results, impls):
    """Medians and ratios, in place."""
    for wl, modes in results.items():
        for mode, per in modes.items():
            k = per.get("kernel")
            kmed = statistics.median(k["values"]) if k and k["values"] else None
            for label, c in per.items():
                c["median"] = statistics.median(c["values"]) if c["values"] else None
                c["min"] = min(c["values"]) if c["values"] else None
                c["max"] = max(c["values"]) if c["values"] else None
                c["unit"] = "MB/s" if wl == "rand4k" else "s"
                c["ratio"] = None
                if label != "kernel" and kmed and c["median"] is not None:
                    c["ratio"] = c["median"] / kmed


def report(sets, impls, args):
    out = []
    labels = [i.label for i in impls]
    out.append(f"# composefs side-by-side benchmark\n")
    out.append(f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, "
               f"{time.strftime('%Y-%m-%d %H:%M')}; medians of {args.runs} run(s); "
               f"build {args.build}\n")
    out.append("Times in seconds; ratio = time / kernel time (lower is better), except "
               "**rand4k** rows: MB/s and ratio = bandwidth / kernel bandwidth "
               "(**higher is better**). `!` marks a value with failed passes (see notes).\n")
    for ds, results in sets:
        info = ds.info
        out.append(f"## {ds.name}: {ds.desc}\n")
        out.append(f"{info['entries']} entries, {info['files']} regular files, "
                   f"{human_bytes(info['bytes'])}; image {ds.img} (digest {ds.digest[:16]}...)\n")
        cols = [l for l in labels if any(l in per for modes in results.values() for per in modes.values())]
        head = ["workload"] + [c for l in cols for c in ([l] if l == "kernel" else [l, f"{l} / kernel"])]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        notes = []
        for wl in ALL_WORKLOADS:
            if wl not in results:
                continue
            for mode in ("cold", "warm"):
                per = results[wl].get(mode, {})
                name = f"{wl} {mode}" + (" (MB/s; ratio higher is better)" if wl == "rand4k" else "")
                row = [name]
                kbytes = None
                for l in cols:
                    c = per.get(l)
                    if c is None:
                        row += ["n/a"] if l == "kernel" else ["n/a", ""]
                        continue
                    bad = [p for p in c["passes"] if p.get("errors")]
                    for p in bad[:1]:
                        notes.append(f"{wl} {mode}, {l}: {len(bad)} of {len(c['passes'])} passes failed: "
                                     f"{p.get('first_error')}")
                    v = "FAIL" if c["median"] is None else fmt_val(c["median"], c["unit"]) + ("!" if bad else "")
                    row.append(v)
                    if l != "kernel":
                        row.append(f"{c['ratio']:.2f}" if c["ratio"] is not None else "")
                    # Same data as the kernel mount?
                    last = c["passes"][-1]
                    if "bytes" in last and not last.get("errors"):
                        if l == "kernel":
                            kbytes = (last["files"], last["bytes"])
                        elif kbytes and (last["files"], last["bytes"]) != kbytes:
                            notes.append(f"{wl} {mode}, {l}: read {last['files']} files / "
                                         f"{last['bytes']} bytes, the kernel {kbytes[0]} / {kbytes[1]}")
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        # Bandwidths of seq and fio wall times, for the file set.
        extra = []
        for mode in ("cold", "warm"):
            for l in cols:
                c = results.get("seq", {}).get(mode, {}).get(l)
                if c and c["values"]:
                    mbs = [p["MB/s"] for p in c["passes"] if not p.get("errors")]
                    extra.append(f"seq {mode} {l}: {statistics.median(mbs):.0f} MB/s")
        for mode in ("cold", "warm"):
            for l in cols:
                c = results.get("rand4k", {}).get(mode, {}).get(l)
                if c and c["values"]:
                    w = [p["wall"] for p in c["passes"] if not p.get("errors")]
                    extra.append(f"rand4k {mode} {l}: fio wall time {statistics.median(w):.2f} s")
        if extra:
            out.append("Also: " + "; ".join(extra) + ".\n")
            if "rand4k" in results:
                out.append("(fio's bandwidth is measured after it has opened the file; a cold "
                           "open of ours builds the object's Merkle tree, reading it in full, "
                           "which the fio wall time includes.)\n")
        # Peak RSS of the FUSE daemons after the read workload (or the last one).
        rss = []
        for impl in impls:
            if not impl.fuse:
                continue
            for wl in ("read", "seq", "lslR"):
                vals = {m: [p["vmhwm_kib"] for p in results.get(wl, {}).get(m, {}).get(impl.label, {}).get("passes", [])
                            if p.get("vmhwm_kib")] for m in ("cold", "warm")}
                if vals["cold"] or vals["warm"]:
                    parts = [f"{m} {max(v) / 1024:.1f} MiB" for m, v in vals.items() if v]
                    rss.append(f"{impl.label} after {wl}: " + ", ".join(parts))
                    break
        if rss:
            out.append("Peak RSS of the daemon (VmHWM, max over runs; warm includes the cold pass "
                       "on the same mount): " + "; ".join(rss) + ".\n")
        for impl in impls:
            if impl.kind != "ours":
                continue
            rows = []
            settings = None
            for wl in ALL_WORKLOADS:
                for mode in ("cold", "warm"):
                    c = results.get(wl, {}).get(mode, {}).get(impl.label)
                    st = next((p["daemon_stats"] for p in reversed(c["passes"]) if p.get("daemon_stats")), None) if c else None
                    if st:
                        settings = settings or st
                        rows.append((f"{wl} {mode}", st))
            if not rows:
                continue
            keys = [k for k, v in rows[0][1].items() if isinstance(v, int)
                    and any(r[1].get(k) for r in rows)]
            sset = ", ".join(f"{k} {settings[k]}" for k in ("verity", "passthrough", "io", "verification")
                             if k in settings)
            out.append(f"{impl.label} daemon counters per timed pass (last run; {sset}; "
                       f"options: {','.join(impl.opts) or '-'}):\n")
            hk = [k.replace("_bytes", " MiB") if k.endswith("_bytes") else k for k in keys]
            out.append("| pass | " + " | ".join(hk) + " |")
            out.append("|---|" + "---:|" * len(keys))
            for name, st in rows:
                vals = [f"{st.get(k, 0) / 1048576:.1f}" if k.endswith("_bytes") else str(st.get(k, 0))
                        for k in keys]
                out.append(f"| {name} | " + " | ".join(vals) + " |")
            out.append("")
        for impl in impls:
            if impl.fuse and impl.exit_problems:
                notes.append(f"{impl.label}: {impl.exit_problems[0]}"
                             + (f" (and {len(impl.exit_problems) - 1} more)" if len(impl.exit_problems) > 1 else ""))
        if notes:
            out.append("Notes:\n")
            out += [f"- {n}" for n in dict.fromkeys(notes)]
            out.append("")
    out.append("Implementations:\n")
    for impl in impls:
        if impl.kind == "kernel":
            out.append("- kernel: erofs (loop, ro) + overlay `ro,lowerdir=META::STORE,metacopy=on,redirect_dir=on`")
        elif impl.kind == "ours":
            out.append(f"- {impl.label}: `{impl.binary} -f -o basedir=STORE,digest=HEX,{','.join(impl.opts)} IMG MNT`")
        elif impl.kind == "cfs-fuse":
            out.append(f"- {impl.label}: `{impl.binary} -f -o source=IMG,basedir=STORE MNT` (upstream: no verification, no digest check, lists only user.* xattrs)")
        else:
            out.append(f"- {impl.label}: `{impl.binary} -f IMG.sqfs MNT` (mksquashfs {args.mksquashfs_opts})")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring (head of this file) for details.")
    ap.add_argument("--build", default=os.environ.get("CFS_BUILD", os.path.join(REPO, "build")),
                    help="build directory holding daemon/composefs-fuse and cli/mkcomposefs, "
                         "cli/composefs-info (default: $CFS_BUILD or REPO/build)")
    ap.add_argument("--workdir", default="/var/tmp/cfs-bench",
                    help="images, stores, mount points, logs (default /var/tmp/cfs-bench)")
    ap.add_argument("--sets", default="doc,share,big", help=f"comma list of {','.join(ALL_SETS)}")
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS),
                    help=f"comma list of {','.join(ALL_WORKLOADS)} (default all that apply)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions; medians are reported (default 5)")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big file in MiB (default 1024)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the images and stores of the chosen sets")
    ap.add_argument("--daemon-opts", default="", help="extra -o options for ours, e.g. verity=off")
    ap.add_argument("--label", default="composefs-fuse", help="name of ours' column in the tables (default composefs-fuse)")
    ap.add_argument("--ours-extra", nargs=2, action="append", default=[], metavar=("LABEL", "OPTS"),
                    help="another variant of ours, a column named LABEL, run with the -o options OPTS "
                         "instead of --daemon-opts (repeatable), e.g. --ours-extra 'verity=off' verity=off")
    ap.add_argument("--cfs-fuse", metavar="PATH", help="upstream's cfs-fuse binary to compare with")
    ap.add_argument("--squashfuse", metavar="PATH", help="squashfuse_ll binary to compare with")
    ap.add_argument("--mksquashfs-opts", default="-noI -noD -noF -noX",
                    help="options for mksquashfs (default: no compression)")
    ap.add_argument("--fio-io-size", default="64M", help="fio --io_size for rand4k (default 64M)")
    ap.add_argument("--fio-runtime", type=int, default=10,
                    help="fio --runtime cap of a cold rand4k pass in s (default 10)")
    ap.add_argument("--fio-warm-seconds", type=int, default=2,
                    help="duration of a warm rand4k pass (fio --time_based), default 2")
    ap.add_argument("--timeout", type=int, default=3600, help="timeout of one pass in s (default 3600)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    a.workdir = os.path.abspath(a.workdir)
    a.sets = [s for s in a.sets.split(",") if s]
    a.workloads = [w for w in a.workloads.split(",") if w]
    for s in a.sets:
        if s not in ALL_SETS:
            ap.error(f"unknown set {s!r} (choose from {', '.join(ALL_SETS)})")
    for w in a.workloads:
        if w not in ALL_WORKLOADS:
            ap.error(f"unknown workload {w!r} (choose from {', '.join(ALL_WORKLOADS)})")
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    return a


def check_env(args):
    if os.geteuid() != 0:
        sys.exit("bench.py: must run as root (kernel mounts, drop_caches)")
    need = [os.path.join(args.build, "daemon", "composefs-fuse"),
            os.path.join(args.build, "cli", "mkcomposefs"),
            os.path.join(args.build, "cli", "composefs-info")]
    for extra in (args.cfs_fuse, args.squashfuse):
        if extra:
            need.append(extra)
    for p in need:
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            sys.exit(f"bench.py: {p} is not an executable file")
    for prog in ["fusermount3", "mount", "umount", "ls", "find"] + \
            (["mksquashfs"] if args.squashfuse else []):
        if not shutil.which(prog):
            sys.exit(f"bench.py: {prog} not found")
    if "rand4k" in args.workloads and "big" in args.sets and not shutil.which("fio"):
        log("warning: fio not found (apt-get install fio): skipping rand4k")
        args.workloads.remove("rand4k")
    left = mounts_under(args.workdir)
    if left:
        sys.exit("bench.py: refusing to run, something is mounted under "
                 f"{args.workdir}:\n  " + "\n  ".join(left) +
                 "\nunmount it first (umount / fusermount3 -u, deepest first)")
    loops = loops_under(args.workdir)
    if loops:
        log("warning: loop devices left on images under the work dir: " +
            ", ".join(f"{d} ({b})" for d, b in loops))


def final_cleanup(impls, workdir):
    for impl in impls:
        try:
            if impl.mounted() or impl.proc is not None:
                impl.umount()
        except Exception as e:  # keep cleaning the others
            log(f"warning: cleaning up {impl.label}: {e}")
    for m in sorted(mounts_under(workdir), key=len, reverse=True):
        log(f"warning: {m} still mounted; umount -l")
        run(["umount", "-l", m], check=False)
    for dev, back in loops_under(workdir):
        log(f"warning: detaching leftover loop device {dev} ({back})")
        run(["losetup", "-d", dev], check=False)


def main():
    args = parse_args()
    check_env(args)
    os.makedirs(args.workdir, exist_ok=True)
    lock = open(os.path.join(args.workdir, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"bench.py: another bench.py is running on {args.workdir}")

    def on_signal(sig, frame):
        raise KeyboardInterrupt(f"signal {sig}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) != signal.SIG_IGN:   # respect nohup
            signal.signal(s, on_signal)

    ours_bin = os.path.join(args.build, "daemon", "composefs-fuse")
    kernel = Kernel(args.workdir)
    impls = [kernel, Ours(args.label, args.workdir, ours_bin, args.daemon_opts)]
    for label, opts in args.ours_extra:
        impls.append(Ours(label, args.workdir, ours_bin, opts))
    if args.cfs_fuse:
        impls.append(CfsFuse("cfs-fuse", args.workdir, os.path.abspath(args.cfs_fuse)))
    if args.squashfuse:
        impls.append(Squashfuse("squashfuse_ll", args.workdir, os.path.abspath(args.squashfuse)))
    seen = set()
    for impl in impls:
        if impl.slug in seen:
            sys.exit(f"bench.py: two implementations named {impl.label!r}; use --label / distinct LABELs")
        seen.add(impl.slug)

    builder = Builder(args)
    done = []
    current = None
    interrupted = False
    try:
        for name in args.sets:
            ds = builder.dataset(name)
            if args.squashfuse:
                builder.squashfs(ds, kernel)
            applicable = FILE_WORKLOADS if name == "big" else TREE_WORKLOADS
            wls = [w for w in args.workloads if w in applicable]
            skipped = [w for w in args.workloads if w not in applicable]
            if skipped:
                log(f"[{name}] not applicable here: {', '.join(skipped)}")
            results = {}
            current = (ds, results)
            for wl in wls:
                for rep in range(args.runs):
                    log(f"[{name}] {wl} run {rep + 1}/{args.runs}")
                    for impl in impls:
                        if impl.supports(ds):
                            measure(ds, wl, impl, args, results)
            summarize(results, impls)
            done.append(current)
            current = None
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up; reporting what was measured")
        if current and current[1]:
            current[0].desc += " (INTERRUPTED: partial results)"
            summarize(current[1], impls)
            done.append(current)
    finally:
        # Not interruptible while cleaning up.
        old = [(s, signal.signal(s, signal.SIG_IGN)) for s in (signal.SIGINT, signal.SIGTERM)]
        final_cleanup(impls, args.workdir)
        for s, h in old:
            signal.signal(s, h)

    if done:
        text = report(done, impls, args)
        sys.stdout.write(text)
        if args.json:
            j = {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                 "runs": args.runs, "build": args.build,
                 "implementations": [{"label": i.label, "kind": i.kind,
                                      "binary": getattr(i, "binary", None),
                                      "options": getattr(i, "opts", None)} for i in impls],
                 "sets": {ds.name: {"desc": ds.desc, "image": ds.img, "store": ds.store,
                                    "digest": ds.digest, "squashfs": ds.sqfs, "info": ds.info,
                                    "results": res} for ds, res in done}}
            with open(args.json, "w") as f:
                json.dump(j, f, indent=1)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
