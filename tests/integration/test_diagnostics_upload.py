"""GetDiagnostics (firmware/diag/upload.py, the log ring firmware/diag/ring.py) in the MicroPython unix port
(110wK heap) against real servers on 127.0.0.1: pyftpdlib (passive STOR) and Python's http.server (PUT, POST
after a 405, HTTPS verified with tools/pki.py certificates). The probe (ota_probe.py) boots a flash laid out as
make deploy leaves a board, feeds the ring through firmware/log.py's sink (a password among the lines) and
uploads; the test reads what the server stored."""
import os
import re
import time

import pytest

import build
import otapack
import pki
from ota_servers import FTPServers, HTTPServers, lay_out_flash, run_probe, statuses

SECRET = "Pa55-w0rd-CP"


@pytest.fixture(scope="module")
def kit(tmp_path_factory, ota_keys):
    d = tmp_path_factory.mktemp("diag_kit")
    tree, _ = build.build(os.path.join(build.ROOT, "build", "unix"))  # the session's build: nothing to compile
    priv, pub = ota_keys["vendor"]
    old = otapack.pack(otapack.load_private(priv), "1.0-diag", otapack.tree_files(tree))
    return {"tree": tree, "pub": pub, "old": old, "certs": pki.make_pki(str(d / "pki"))}


@pytest.fixture
def flash(kit, tmp_path):
    return lay_out_flash(tmp_path / "flash", kit["old"], kit["pub"], kit["tree"])


@pytest.fixture
def web(tmp_path):
    s = HTTPServers(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def ftpd(tmp_path):
    (tmp_path / "up").mkdir()
    s = FTPServers(tmp_path, tmp_path / "up")
    try:
        yield s
    finally:
        s.stop()


def diag(flash, url, *extra):
    rc, out = run_probe(flash, "diag", "--url", url, "--secret", SECRET, *extra)
    assert rc == 0 and "Traceback" not in out, out
    name = re.search(r"^FILE (\S+)$", out, re.M).group(1)
    return name, out


def check_content(body, name):
    text = body.decode()
    assert text.startswith("# Diagnostics of CP-PROBE at "), text[:200]
    for line in ("version: probe", "slot: a", "reset_cause: power-on", "link: up", "queue: 0"):
        assert line in text, line
    assert re.search(r"^heap_free: \d+$", text, re.M) and re.search(r"^uptime_s: \d+$", text, re.M)
    logged = re.findall(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \d+ I probe: line (\d+) of the log$", text, re.M)
    assert logged[-20:] == [str(i) for i in range(20)], text  # the ring also keeps the earlier boots' lines
    assert "W probe: a careless line with the password *** in it" in text
    assert SECRET not in text
    assert re.match(r"diag-CP-PROBE-\d{8}T\d{6}Z\.txt$", name), name


def test_upload_to_ftp_with_passive_stor(flash, ftpd, tmp_path):
    port = ftpd.start()
    name, out = diag(flash, "ftp://up:up-pass@127.0.0.1:%d/" % port, "--retries", 1)
    assert statuses(out) == ["Uploading", "Uploaded"], out
    check_content((tmp_path / "up" / name).read_bytes(), name)
    assert "up-pass" not in out  # the URL's password stays out of the log
    assert not (flash / "diag" / "upload.txt").exists()


def test_upload_over_http_put_and_https(kit, flash, web):
    srv, port = web.start()
    name, out = diag(flash, "http://127.0.0.1:%d/upload" % port)
    assert statuses(out) == ["Uploading", "Uploaded"], out
    method, ctype, body = srv.uploads["/upload/" + name]
    assert method == "PUT" and ctype == "text/plain"
    check_content(body, name)
    tls, tport = web.start(kit["certs"]["server_cert"], kit["certs"]["server_key"])
    name, out = diag(flash, "https://localhost:%d/upload/" % tport, "--ca", kit["certs"]["ca"])
    assert statuses(out) == ["Uploading", "Uploaded"], out
    check_content(tls.uploads["/upload/" + name][2], name)


def test_server_refusing_put_gets_a_post(flash, web):
    srv, port = web.start()
    name, out = diag(flash, "http://127.0.0.1:%d/noput/" % port)
    assert statuses(out) == ["Uploading", "Uploaded"], out
    assert [r[0] for r in srv.requests] == ["PUT", "POST"]
    check_content(srv.uploads["/noput/" + name][2], name)


def test_upload_failed_after_the_asked_retries(flash, web):
    srv, port = web.start()
    t0 = time.time()
    name, out = diag(flash, "http://127.0.0.1:%d/fail/" % port, "--retries", 2, "--interval", 1)
    assert statuses(out) == ["Uploading", "UploadFailed"], out
    times = [t for _, _, t in srv.requests]
    assert len(times) == 3 and times[2] - times[0] >= 1.9, times
    assert "UploadFailed: HTTP 500 Internal Server Error" in out and time.time() - t0 >= 2
    assert not (flash / "diag" / "upload.txt").exists()


def test_time_window_selects_the_lines(flash, ftpd, tmp_path):
    port = ftpd.start()
    future = int(time.time()) + 3600
    name, out = diag(flash, "ftp://up:up-pass@127.0.0.1:%d/" % port, "--start", future)
    text = (tmp_path / "up" / name).read_text()
    assert statuses(out) == ["Uploading", "Uploaded"] and "---- end, 0 line(s) ----" in text, text
    assert "version: probe" in text  # the snapshot is always there
