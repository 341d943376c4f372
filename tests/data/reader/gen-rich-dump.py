#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Write rich.dump: a composefs dump exercising what the reader must handle
(nested and large directories, hard links, external files with and without
digests, inline files of every size class, long names and symlinks, devices,
whiteouts, shared and escaped overlay xattrs).  The committed rich-v0.cfs and
rich-v1.cfs were built from it by upstream mkcomposefs 1.0.8
(--min-version=V --max-version=V --from-file), and rich-v*.cfs.info-dump is
what upstream composefs-info dump prints for them."""
import hashlib
import random
import sys

rnd = random.Random(1234)


def esc(b):
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif c == 0x0A:
            out.append("\\n")
        elif 0x21 <= c <= 0x7E and c != 0x3D:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


def digest(seed):
    return hashlib.sha256(seed.encode()).hexdigest()


lines = []


def add(path, size, mode, nlink=1, uid=0, gid=0, rdev=0, mtime="1700000000.123456789",
        payload="-", content="-", dig="-", xattrs=()):
    x = "".join(" " + k + "=" + v for k, v in xattrs)
    lines.append(f"{path} {size} {mode} {nlink} {uid} {gid} {rdev} {mtime} {payload} {content} {dig}{x}")


add("/", 4096, "40755", 5, xattrs=[("security.selinux", "system_u:object_r:root_t:s0"),
                                   ("user.root", "r")])
# A directory big enough for many directory blocks (binary search across blocks).
add("/big", 4096, "40755", 2, 1000, 1000, mtime="1600000000.0", xattrs=[("user.shared", "same")])
for i in range(300):
    name = "entry-%04d-%s" % (i, "x" * (i % 40))
    if i % 3 == 0:
        d = digest(name)
        add("/big/" + name, 1000 + i, "100644", 1, 1000, 1000, payload=d[:2] + "/" + d[2:], dig=d,
            xattrs=[("user.shared", "same")])
    elif i % 3 == 1:
        add("/big/" + name, 0, "100600", 1, 1000, 1000, xattrs=[("user.shared", "same")])
    else:
        add("/big/" + name, 7, "120777", 1, 1000, 1000, payload="../t%04d" % i)
# Inline content sizes around the block/half-block boundaries.
add("/inline", 4096, "40700", 2, 70000, 70000, mtime="1500000000.999999999")
for n in (1, 63, 64, 65, 2047, 2048, 2049, 4095, 4096, 4097, 5000):
    data = bytes(rnd.randrange(256) for _ in range(n))
    add("/inline/f%d" % n, n, "100644", 1, 70000, 70000, content=esc(data),
        xattrs=[("user.size", str(n))])
# External files: with digest, without digest, and a redirect-only payload.
d = digest("ext")
add("/ext-digest", 123456789, "100644", 2, payload=d[:2] + "/" + d[2:], dig=d,
    xattrs=[("trusted.overlay.metacopy", "ignored"), ("user.a", "1")])
add("/ext-nodigest", 5000000, "100644", 1, payload="ab/" + "c" * 62)
add("/ext-odd", 77, "100644", 1, payload="odd/path/of/len")
# Hard links to a file, a symlink and a device.
add("/link-to-ext", 123456789, "@100644", 2, payload="/ext-digest")
add("/sym", 11, "120777", 2, payload="/etc/passwd")
add("/sym-link", 11, "@120777", 2, payload="/sym")
add("/dev-null", 0, "20666", 2, rdev=259)
add("/dev-null-link", 0, "@20666", 2, payload="/dev-null")
add("/blk", 0, "60660", 1, rdev=2049)
add("/fifo", 0, "10644", 1)
add("/sock", 0, "140755", 1)
# Whiteouts (become escaped regular files) and overlay xattrs to escape.
add("/wh", 4096, "40755", 2, xattrs=[("trusted.overlay.opaque", "y"), ("user.overlay.x", "u")])
add("/wh/gone", 0, "20000", 1)
add("/wh/kept", 0, "20000", 1, rdev=1)
add("/wh/escaped", 5, "100644", 1, content="hello",
    xattrs=[("trusted.overlay.redirect", "/x"), ("trusted.overlay.custom", "v=1\\x202")])
# Deep nesting and long names.
path = ""
for depth in range(30):
    path += "/d%d" % depth
    add(path, 4096, "40755", 2)
long = "L" * 255
add(path + "/" + long, 4095, "120777", 1, payload="t" * 4095)
add("/" + long, 3, "100644", 1, content="abc")
# Odd names: spaces, newline, non-UTF-8, '=' and backslash.
add("/with\\x20space", 0, "100644")
add("/new\\nline", 0, "100644")
add("/bytes\\xff\\xfe", 0, "100644")
add("/eq=back\\\\slash", 0, "100644", xattrs=[("user.k\\x3dey", "v\\x3dal")])
# Many xattrs, some shared between files, values with every byte.
add("/xattrs", 0, "100644", xattrs=[("user.v%02d" % i, esc(bytes(range(i * 8, i * 8 + 8))))
                                    for i in range(32)] + [("security.capability", "\\x01\\x00")])
add("/xattrs2", 0, "100644", xattrs=[("user.v00", esc(bytes(range(0, 8)))),
                                     ("trusted.t", "x"), ("user.shared", "same")])

sys.stdout.write("\n".join(lines) + "\n")
