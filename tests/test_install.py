# SPDX-License-Identifier: LGPL-2.1-or-later
"""What `meson install` would write, read from `meson introspect
--installed` on a fresh configuration (nothing is built or installed)."""
import json
import os
import subprocess

import pytest

from conftest import REPO


def _installed(tmp_path, *options):
    build = str(tmp_path / "build")
    subprocess.run(["meson", "setup", *options, build, REPO], check=True, capture_output=True)
    p = subprocess.run(["meson", "introspect", "--installed", build], check=True, capture_output=True)
    return sorted(set(json.loads(p.stdout).values()))


def test_install_stays_under_the_prefix(tmp_path):
    prefix = str(tmp_path / "x")
    files = _installed(tmp_path, f"--prefix={prefix}")
    outside = [f for f in files if not f.startswith(prefix + "/")]
    assert not outside, outside
    names = {os.path.relpath(f, prefix) for f in files}
    for want in ("bin/composefs-fuse", "bin/mkcomposefs", "lib/systemd/system/composefs-fuse@.service",
                 "lib/systemd/user/composefs-fuse-user@.service", "share/man/man5/composefs-dump.5"):
        assert want in names, names


def test_install_without_the_upstream_named_tools(tmp_path):
    """-Dinstall_tools=false leaves mkcomposefs, composefs-info and
    composefs-dump (and their pages) to the distribution's composefs
    package; unit directories can be named."""
    prefix = str(tmp_path / "x")
    units = str(tmp_path / "units")
    files = _installed(tmp_path, f"--prefix={prefix}", "-Dinstall_tools=false",
                       f"-Dsystemdsystemunitdir={units}/system", f"-Dsystemduserunitdir={units}/user")
    names = {os.path.basename(f) for f in files}
    assert "composefs-fuse" in names and "composefs-fuse.1" in names
    for tool in ("mkcomposefs", "composefs-info", "composefs-dump"):
        assert not any(n.startswith(tool) for n in names), names
    assert f"{units}/system/composefs-fuse@.service" in files
    assert f"{units}/user/composefs-fuse-user@.service" in files
