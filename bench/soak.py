#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Soak test of composefs-fuse: N readers over a tree for a given time, the
daemon's memory and file descriptors sampled as they go.

Usage (as root):

    bench/soak.py [--build DIR] [--set share] [--readers 16]
                  [--duration 1800] [--interval 10] [--drop-every 60]
                  [--daemon-opts OPTS] [--csv FILE] [--png FILE]

The image and store of the set come from bench.py's work directory (built
there on first use, as bench.py does).  The daemon is mounted once with an
empty tree cache; each reader process walks the whole tree in its own
random order, reading every file to the end, again and again until the
time is up.  Every --drop-every seconds the page cache, dentries and inodes
are dropped, so that the readers keep reaching the daemon (lookups, opens,
reads, trees from the cache or rebuilt) instead of the kernel's caches.

Every --interval seconds one row goes to the CSV: seconds since start, the
daemon's RSS and peak RSS (KiB), open file descriptors, threads, and its
counters (requests, bytes read, blocks hashed, trees built, idle objects),
plus the readers' passes, bytes and errors.  At the end the script prints
RSS at 5 minutes and at the end, and exits non-zero if they differ by more
than --max-growth (default 10%), if any reader saw an error, or if the
daemon died.  With gnuplot (Debian: gnuplot-nox) it also draws --png.
"""
import argparse
import csv
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its Builder, Ours and helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = ["seconds", "rss_kib", "hwm_kib", "fds", "threads", "reads", "lookups", "read_bytes",
          "cas_blocks_hashed", "cas_trees_built", "cas_idle_objects", "cas_lru_bytes", "passes", "reader_bytes",
          "reader_errors"]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()[0] if v.split() else ""
    return out


def reader(root, seed, stop, counters, lock):
    """Read every file under ROOT in a random order, until STOP is set."""
    rnd = random.Random(seed)
    buf = bytearray(1 << 17)
    while not stop.is_set():
        files = []
        for d, _, names in os.walk(root):
            files += [os.path.join(d, n) for n in names]
        rnd.shuffle(files)
        nbytes = errors = 0
        for p in files:
            if stop.is_set():
                break
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # symlinks, FIFOs, sockets: not files to read
            try:
                while True:
                    n = os.readv(fd, [buf])
                    if n <= 0:
                        break
                    nbytes += n
            except OSError as e:
                if e.errno not in (11,):  # EAGAIN from a FIFO
                    errors += 1
                    print(f"soak: reader {seed}: {p}: {e.strerror}", file=sys.stderr, flush=True)
            finally:
                os.close(fd)
        with lock:
            counters[0] += 0 if stop.is_set() else 1
            counters[1] += nbytes
            counters[2] += errors


def plot(csv_path, png, title):
    script = f"""
set terminal pngcairo size 1000,520 font ",10"
set output "{png}"
set datafile separator ","
set key autotitle columnhead top left
set title "{title}"
set xlabel "minutes"
set ylabel "MiB"
set y2label "file descriptors"
set y2tics
set ytics nomirror
set yrange [0:*]
set y2range [0:*]
set grid
plot "{csv_path}" using ($1/60):($2/1024) with lines lw 2 title "RSS (MiB)", \\
     "" using ($1/60):($3/1024) with lines dt 2 title "peak RSS (MiB)", \\
     "" using ($1/60):4 axes x1y2 with lines title "open fds"
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("CFS_BUILD", os.path.join(REPO, "build")))
    ap.add_argument("--workdir", default="/var/tmp/cfs-bench")
    ap.add_argument("--set", default="share", help="a bench.py set: doc, share, big (default share)")
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--duration", type=int, default=1800, help="seconds (default 1800)")
    ap.add_argument("--interval", type=int, default=10, help="seconds between samples (default 10)")
    ap.add_argument("--drop-every", type=int, default=60, help="drop caches every N s (0: never)")
    ap.add_argument("--daemon-opts", default="")
    ap.add_argument("--max-growth", type=float, default=0.10,
                    help="allowed RSS growth from 5 minutes to the end (default 0.10)")
    ap.add_argument("--csv", default="soak.csv")
    ap.add_argument("--png", default=None, help="plot to this file (needs gnuplot)")
    a = ap.parse_args()
    a.build, a.workdir = os.path.abspath(a.build), os.path.abspath(a.workdir)
    if os.geteuid() != 0:
        sys.exit("soak: run as root (it drops caches)")

    bargs = argparse.Namespace(build=a.build, workdir=a.workdir, rebuild=False, big_mib=1024)
    ds = bench.Builder(bargs).dataset(a.set)
    ours = bench.Ours("soak", a.workdir, os.path.join(a.build, "daemon", "composefs-fuse"), a.daemon_opts)
    ours.prepare_cold()
    bench.drop_caches()
    mnt = ours.mount(ds)
    pid = ours.pid()
    bench.log(f"soak: {a.readers} readers over {ds.desc} on {mnt} (daemon pid {pid}) "
              f"for {a.duration} s, sampling every {a.interval} s into {a.csv}")

    stop = multiprocessing.Event()
    lock = multiprocessing.Lock()
    counters = multiprocessing.Array("q", 3, lock=False)
    procs = [multiprocessing.Process(target=reader, args=(mnt, i, stop, counters, lock))
             for i in range(a.readers)]
    for p in procs:
        p.start()
    rows, failed = [], []
    t0 = time.monotonic()
    next_drop = t0 + a.drop_every if a.drop_every else None
    try:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(FIELDS)
            k = 0
            while True:
                k += 1
                target = t0 + k * a.interval
                while True:
                    now = time.monotonic()
                    if next_drop and now >= next_drop:
                        bench.drop_caches()
                        next_drop += a.drop_every
                    if now >= target:
                        break
                    time.sleep(min(target - now, 1.0))
                if ours.pid() is None:
                    failed.append(f"the daemon exited: {ours.log_tail()}")
                    break
                st = proc_status(pid)
                stats = ours.stats() or {}
                with lock:
                    passes, rbytes, rerr = counters[0], counters[1], counters[2]
                row = [round(time.monotonic() - t0), int(st["VmRSS"]), int(st["VmHWM"]),
                       len(os.listdir(f"/proc/{pid}/fd")), int(st["Threads"]),
                       stats.get("reads", ""), stats.get("lookups", ""), stats.get("read_bytes", ""),
                       stats.get("cas_blocks_hashed", ""), stats.get("cas_trees_built", ""),
                       stats.get("cas_idle_objects", ""), stats.get("cas_lru_bytes", ""), passes, rbytes, rerr]
                w.writerow(row)
                f.flush()
                rows.append(row)
                bench.log("soak: " + " ".join(f"{n}={v}" for n, v in zip(FIELDS, row)))
                if row[0] >= a.duration:
                    break
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        ours.umount()

    at5 = [r for r in rows if r[0] >= 300]
    if at5 and rows[-1][0] >= 300:
        rss5, rss_end = at5[0][1], rows[-1][1]
        growth = (rss_end - rss5) / rss5
        bench.log(f"soak: RSS {rss5 / 1024:.1f} MiB at {at5[0][0]} s, {rss_end / 1024:.1f} MiB at "
                  f"{rows[-1][0]} s ({growth:+.1%}); peak {rows[-1][2] / 1024:.1f} MiB; fds "
                  f"{at5[0][3]} -> {rows[-1][3]}; {rows[-1][12]} passes, "
                  f"{rows[-1][13] / 2**30:.1f} GiB read, {rows[-1][14]} reader errors")
        if abs(growth) > a.max_growth:
            failed.append(f"RSS changed by {growth:+.1%} between 5 minutes and the end")
    if rows and rows[-1][14]:
        failed.append(f"{rows[-1][14]} reader errors")
    if ours.exit_problems:
        failed.append("daemon: " + "; ".join(ours.exit_problems))
    if a.png:
        if shutil.which("gnuplot"):
            plot(a.csv, a.png, f"composefs-fuse soak: {a.readers} readers over {ds.desc}, "
                 f"caches dropped every {a.drop_every} s")
            bench.log(f"soak: plot in {a.png}")
        else:
            bench.log("soak: no gnuplot (apt install gnuplot-nox): no plot")
    for m in failed:
        bench.log(f"soak: FAILED: {m}")
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
