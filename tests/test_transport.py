# SPDX-License-Identifier: LGPL-2.1-or-later
"""FUSE over io_uring: used when the kernel offers it (root turns on
/sys/module/fuse/parameters/enable_uring; the test restores it), counted in
the stats, and a clean fall back to /dev/fuse when it is off or refused."""
import os

import pytest

from conftest import fuse_mount, run, tool
from test_datapath import _snap

PARAM = "/sys/module/fuse/parameters/enable_uring"
pytestmark = pytest.mark.skipif(not os.path.exists(PARAM), reason="kernel without FUSE over io_uring")


@pytest.fixture
def uring_param(monkeypatch):
    # this test chooses the transport itself (not scripts/test.sh's second pass)
    monkeypatch.delenv("CFS_TRANSPORT", raising=False)
    old = open(PARAM).read().strip()

    def set_(v):
        with open(PARAM, "w") as f:
            f.write(v + "\n")
    yield set_
    set_(old)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("transport")
    src = d / "src"
    (src / "dir").mkdir(parents=True)
    for i in range(30):
        (src / "dir" / f"f{i}").write_bytes(os.urandom(200 + 1000 * i))
    img, objs = str(d / "img.cfs"), str(d / "objs")
    run([tool("mkcomposefs"), f"--digest-store={objs}", str(src), img])
    return str(src), img, objs


def _walk_and_read(src, mnt):
    for i in range(30):
        with open(os.path.join(mnt, "dir", f"f{i}"), "rb") as f:
            assert f.read() == open(os.path.join(src, "dir", f"f{i}"), "rb").read()
    assert sorted(os.listdir(os.path.join(mnt, "dir"))) == sorted(os.listdir(os.path.join(src, "dir")))


@pytest.mark.parametrize("param,option,want", [("Y", "uring=auto", "io_uring"),
                                                ("Y", "uring=off", "dev-fuse"),
                                                ("Y", None, "dev-fuse"),  # off by default
                                                ("N", "uring=auto", "dev-fuse")])
def test_transport(image, tmp_path, uring_param, param, option, want):
    src, img, objs = image
    uring_param(param)
    stats = str(tmp_path / "stats")
    opts = [f"stats_file={stats}"] + ([option] if option else [])
    with fuse_mount(img, objs, options=opts) as (mnt, proc):
        _walk_and_read(src, mnt)
        s = _snap(proc, stats)
    assert s["transport"] == want, s
    if want == "io_uring":
        assert s["uring_requests"] >= 30, s
        assert "transport: FUSE over io_uring" in proc.stderr_text
    else:
        assert s["uring_requests"] == 0, s
        if option == "uring=auto":
            assert "transport: /dev/fuse (io_uring: not offered by the kernel" in proc.stderr_text
