"""`download.source: url`: fetch_file against a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time

import pytest

from dreamdiffusion.download.fetch import fetch_file
from dreamdiffusion.core.fileio import DataError

BODY = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, more than one read chunk
GOOD = hashlib.sha256(BODY).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """/data: BODY; /flaky: 503 `failures` times then BODY; /drop: half the body then hang up, `drops` times."""

    failures = 0
    drops = 1
    hits: dict = {}

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/flaky" and self.hits[self.path] <= self.failures:
            self.send_error(503, "try again")
        elif self.path == "/drop" and self.hits[self.path] <= self.drops:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.close_connection = True
        elif self.path in ("/data", "/flaky", "/drop"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        else:
            self.send_error(404, "no such file")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.failures, Handler.drops, Handler.hits = 1, 1, {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_fetch_with_right_checksum(server, tmp_path):
    dest = tmp_path / "sub" / "eeg.pth"
    assert fetch_file(f"{server}/data", GOOD, dest, backoff=0.01) == dest
    assert dest.read_bytes() == BODY
    assert leftovers(dest.parent) == ["eeg.pth"]
    # already there with the right checksum: kept, no request made
    fetch_file(f"{server}/data", GOOD.upper(), dest, backoff=0.01)
    assert Handler.hits["/data"] == 1


def test_wrong_checksum_names_both_hashes_and_leaves_nothing(server, tmp_path):
    wrong = "0" * 64
    dest = tmp_path / "eeg.pth"
    with pytest.raises(DataError) as err:
        fetch_file(f"{server}/data", wrong, dest, backoff=0.01)
    assert wrong in str(err.value) and GOOD in str(err.value)
    assert not dest.exists() and leftovers(tmp_path) == []
    assert Handler.hits["/data"] == 1  # a checksum mismatch is not retried


def test_404_is_a_clear_error_without_retries(server, tmp_path):
    with pytest.raises(DataError, match=r"/missing: HTTP 404"):
        fetch_file(f"{server}/missing", GOOD, tmp_path / "x.pth", backoff=0.01)
    assert Handler.hits["/missing"] == 1 and leftovers(tmp_path) == []


def test_unreachable_url_fails_after_retries(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DataError, match=r"download failed after 3 attempt\(s\)") as err:
        fetch_file(f"http://127.0.0.1:{port}/eeg.pth", GOOD, tmp_path / "x.pth", retries=2,
                   timeout=2, backoff=0.01)
    assert f"127.0.0.1:{port}/eeg.pth" in str(err.value)
    assert time.monotonic() - start < 10 and leftovers(tmp_path) == []


def test_server_failing_once_then_succeeding(server, tmp_path):
    dest = tmp_path / "eeg.pth"
    fetch_file(f"{server}/flaky", GOOD, dest, backoff=0.01)
    assert dest.read_bytes() == BODY and Handler.hits["/flaky"] == 2
    assert leftovers(tmp_path) == ["eeg.pth"]


def test_retries_exhausted_on_persistent_5xx(server, tmp_path):
    Handler.failures = 10
    with pytest.raises(DataError, match=r"after 2 attempt\(s\): HTTP 503"):
        fetch_file(f"{server}/flaky", GOOD, tmp_path / "x", retries=1, backoff=0.01)
    assert Handler.hits["/flaky"] == 2 and leftovers(tmp_path) == []


def test_connection_dropped_mid_body_is_retried(server, tmp_path):
    dest = tmp_path / "eeg.pth"
    fetch_file(f"{server}/drop", GOOD, dest, backoff=0.01)
    assert dest.read_bytes() == BODY and Handler.hits["/drop"] == 2


def test_file_url(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(BODY)
    dest = fetch_file(source.as_uri(), GOOD, tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize("url,sha,needle", [
    ("ftp://example.org/eeg.pth", GOOD, "unsupported URL scheme 'ftp'"),
    ("/local/path/eeg.pth", GOOD, "unsupported URL scheme ''"),
    ("http://127.0.0.1:9/eeg.pth", "abc123", "is not 64 hex characters"),
    ("http://127.0.0.1:9/eeg.pth", "g" * 64, "is not 64 hex characters"),
])
def test_bad_arguments_fail_before_network(tmp_path, monkeypatch, url, sha, needle):
    def no_network(*args, **kwargs):
        raise AssertionError("network touched")
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(DataError, match=needle):
        fetch_file(url, sha, tmp_path / "x.pth")
    assert leftovers(tmp_path) == []
