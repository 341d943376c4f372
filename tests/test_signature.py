# SPDX-License-Identifier: LGPL-2.1-or-later
"""Signed images: composefs-fuse -o signature=FILE,cert=FILE mounts only an
image whose fs-verity digest a trusted key signed, in the format Debian's
`fsverity sign` writes (and the kernel checks).  Keys and certificates are
made with openssl here; every refusal names its reason and mounts nothing."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import fuse_mount, run, tool
from test_daemon_user import as_user, dev_fuse_for_all, mounted, plain_user, user_env  # noqa: F401

CA_CONFIG = """[ca]
default_ca = d
[d]
database = {dir}/index.txt
serial = {dir}/serial
new_certs_dir = {dir}
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
"""


def _key_and_cert(d, name, start=None, end=None):
    """A key and a self-signed certificate, valid now unless START/END
    (YYYYMMDDHHMMSSZ) say otherwise."""
    key, cert = os.path.join(d, name + ".key"), os.path.join(d, name + ".crt")
    if start is None:
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", cert, "-days", "30", "-subj", f"/CN={name}"])
        return key, cert
    ca = os.path.join(d, "ca-" + name)
    os.mkdir(ca)
    open(os.path.join(ca, "index.txt"), "w").close()
    with open(os.path.join(ca, "serial"), "w") as f:
        f.write("01\n")
    with open(os.path.join(ca, "cfg"), "w") as f:
        f.write(CA_CONFIG.format(dir=ca))
    csr = os.path.join(ca, "req.csr")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", f"/CN={name}"])
    run(["openssl", "ca", "-batch", "-selfsign", "-config", os.path.join(ca, "cfg"), "-keyfile", key,
         "-in", csr, "-out", cert, "-startdate", start, "-enddate", end])
    return key, cert


def fsverity_sign(img, out, key, cert, *extra):
    run(["fsverity", "sign", img, out, f"--key={key}", f"--cert={cert}", *extra])


def our_sign(img, out, key, cert):
    run([tool("composefs-info"), f"--key={key}", f"--cert={cert}", f"--out={out}", "sign", img])


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sig"))
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "dir"))
    with open(os.path.join(src, "file"), "wb") as f:
        f.write(os.urandom(50000))
    with open(os.path.join(src, "dir", "inline"), "wb") as f:
        f.write(b"INLINE-CONTENT\n")
    img, objs = os.path.join(d, "img.cfs"), os.path.join(d, "objs")
    digest = run([tool("mkcomposefs"), f"--digest-store={objs}", "--print-digest", src,
                  img]).stdout.decode().strip()
    key, cert = _key_and_cert(d, "good")
    sig = os.path.join(d, "img.sig")
    fsverity_sign(img, sig, key, cert)
    return {"dir": d, "src": src, "img": img, "objs": objs, "digest": digest, "key": key,
            "cert": cert, "sig": sig}


def _mount_refused(img, objs, options):
    mnt = tempfile.mkdtemp(prefix="cfs-sig-")
    try:
        p = subprocess.run([tool("composefs-fuse"), "-f", "-o", ",".join([f"basedir={objs}", *options]),
                            img, mnt], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0, p.stderr
        assert not os.path.ismount(mnt)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        return lines[0]
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


def test_fsverity_sign_signature_mounts(signed):
    s = signed
    opts = [f"signature={s['sig']}", f"cert={s['cert']}"]
    with fuse_mount(s["img"], s["objs"], options=opts) as (mnt, proc):
        assert open(os.path.join(mnt, "dir", "inline"), "rb").read() == b"INLINE-CONTENT\n"
        assert open(os.path.join(mnt, "file"), "rb").read() == \
            open(os.path.join(s["src"], "file"), "rb").read()
    assert f"signature '{s['sig']}' verified" in proc.stderr_text
    # digest= and signature= together: both hold
    with fuse_mount(s["img"], s["objs"], options=opts + [f"digest={s['digest']}"]):
        pass
    wrong = s["digest"][:-1] + ("0" if s["digest"][-1] != "0" else "1")
    line = _mount_refused(s["img"], s["objs"], opts + [f"digest={wrong}"])
    assert "does not match digest=" in line


def test_our_signer_is_interchangeable(signed):
    s = signed
    ours = os.path.join(s["dir"], "ours.sig")
    our_sign(s["img"], ours, s["key"], s["cert"])
    # RSA PKCS#1 v1.5 over the same content: the same bytes as fsverity sign
    assert open(ours, "rb").read() == open(s["sig"], "rb").read()
    with fuse_mount(s["img"], s["objs"], options=[f"signature={ours}", f"cert={s['cert']}"]):
        pass
    for sig in (ours, s["sig"]):
        p = run([tool("composefs-info"), f"--signature={sig}", f"--cert={s['cert']}",
                 "verify-signature", s["img"]])
        assert p.stdout.decode().endswith(": OK\n")
    # fsverity's own digest of the image is the one we signed
    d = run(["fsverity", "digest", "--compact", s["img"]]).stdout.decode().strip()
    assert d == s["digest"]


def _bad(s, case):
    """(image, signature, cert, expected words in the refusal)."""
    d = os.path.join(s["dir"], "bad-" + case)
    os.mkdir(d)
    img, sig, cert = s["img"], s["sig"], s["cert"]
    if case == "image-changed":
        img = os.path.join(d, "img.cfs")
        data = bytearray(open(s["img"], "rb").read())
        at = data.index(b"INLINE-CONTENT")
        data[at] ^= 0x20          # still a valid image, one byte of a file changed
        open(img, "wb").write(data)
        return img, sig, cert, "signs another fs-verity digest"
    if case == "other-key":
        _, cert = _key_and_cert(d, "other")
        return img, sig, cert, "not signed by the key of any certificate given"
    if case == "other-image":
        other_src = os.path.join(d, "src")
        os.mkdir(other_src)
        open(os.path.join(other_src, "x"), "w").write("another image\n")
        other = os.path.join(d, "other.cfs")
        run([tool("mkcomposefs"), other_src, other])
        sig = os.path.join(d, "other.sig")
        fsverity_sign(other, sig, s["key"], s["cert"])
        return img, sig, cert, "signs another fs-verity digest"
    if case == "truncated":
        sig = os.path.join(d, "sig")
        open(sig, "wb").write(open(s["sig"], "rb").read()[:200])
        return img, sig, cert, "not a DER PKCS#7 message"
    if case == "garbage":
        sig = os.path.join(d, "sig")
        open(sig, "wb").write(os.urandom(1500))
        return img, sig, cert, "not a DER PKCS#7 message"
    if case == "empty":
        sig = os.path.join(d, "sig")
        open(sig, "wb").close()
        return img, sig, cert, "empty file"
    if case in ("expired", "not-yet-valid"):
        start, end = (("20000101000000Z", "20010101000000Z") if case == "expired"
                      else ("20400101000000Z", "20410101000000Z"))
        key, cert = _key_and_cert(d, case, start, end)
        sig = os.path.join(d, "sig")
        fsverity_sign(img, sig, key, cert)
        return img, sig, cert, ("certificate has expired" if case == "expired"
                                else "certificate is not yet valid")
    if case == "sha512":
        sig = os.path.join(d, "sig")
        fsverity_sign(img, sig, s["key"], s["cert"], "--hash-alg=sha512")
        return img, sig, cert, "SHA-512 fs-verity digest; only SHA-256 is supported"
    if case == "no-cert":
        return img, sig, None, "needs cert="
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["image-changed", "other-key", "other-image", "truncated", "garbage",
                                  "empty", "expired", "not-yet-valid", "sha512", "no-cert"])
def test_refused(signed, case):
    img, sig, cert, words = _bad(signed, case)
    opts = [f"signature={sig}"] + ([f"cert={cert}"] if cert else [])
    line = _mount_refused(img, signed["objs"], opts)
    assert words in line, line
    if case != "no-cert":
        assert "refused" in line, line
    if cert:
        # the offline check says the same
        p = run([tool("composefs-info"), f"--signature={sig}", f"--cert={cert}", "verify-signature",
                 img], check=False)
        assert p.returncode != 0 and words in p.stderr.decode(), p.stderr


def test_signed_mount_as_ordinary_user(signed, plain_user, dev_fuse_for_all):
    """Through fusermount3, with the user's own copy of the certificate."""
    uid, gid = plain_user
    s = signed
    top = tempfile.mkdtemp(prefix="cfs-sig-user-")
    try:
        for name in ("img.cfs", "img.sig", "good.crt"):
            shutil.copy(os.path.join(s["dir"], name), top)
        shutil.copytree(s["objs"], os.path.join(top, "objs"))
        mnt = os.path.join(top, "mnt")
        os.mkdir(mnt)
        run(["chmod", "-R", "a+rX", top])
        os.chown(mnt, uid, gid)
        ws = {"uid": uid, "gid": gid, "home": top}
        opts = (f"basedir={top}/objs,signature={top}/img.sig,cert={top}/good.crt,"
                "tree_cache=none")
        proc = subprocess.Popen([tool("composefs-fuse"), "-f", "-o", opts, f"{top}/img.cfs", mnt],
                                stderr=subprocess.PIPE, text=True, preexec_fn=as_user(ws),
                                env=user_env(ws))
        try:
            deadline = time.monotonic() + 20
            while not mounted(mnt):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            p = subprocess.run(["cat", f"{mnt}/dir/inline"], capture_output=True,
                               preexec_fn=as_user(ws), env=user_env(ws))
            assert p.stdout == b"INLINE-CONTENT\n", p.stderr
        finally:
            subprocess.run(["fusermount3", "-u", mnt], preexec_fn=as_user(ws), env=user_env(ws))
            assert proc.wait(timeout=30) == 0
        # and a bad signature refuses the user's mount too
        open(f"{top}/img.sig", "wb").write(b"\x30\x03\x02\x01\x00")
        p = subprocess.run([tool("composefs-fuse"), "-f", "-o", opts, f"{top}/img.cfs", mnt],
                           capture_output=True, text=True, preexec_fn=as_user(ws), env=user_env(ws),
                           timeout=60)
        assert p.returncode != 0 and "refused" in p.stderr and not mounted(mnt), p.stderr
    finally:
        if mounted(os.path.join(top, "mnt")):
            subprocess.run(["umount", "-l", os.path.join(top, "mnt")])
        shutil.rmtree(top, ignore_errors=True)
