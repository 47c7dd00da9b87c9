"""Download one file by URL: progress bar, retry with backoff, sha256 check, atomic rename.

Only the standard library (urllib) and a progress bar. Nothing is ever left at `dest` unless its
checksum matched; partial downloads live in a hidden temporary file beside it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dreamdiffusion.core.fileio import DataError, sha256_file
from dreamdiffusion.core.progress import progress

SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # worth another try; other 4xx are final


class _Transient(Exception):
    """A failure worth retrying (network error, 5xx, connection dropped mid-body)."""


def _check_args(url: str, sha256: str) -> str:
    """Refuse a malformed checksum or an unsupported scheme before touching the network."""
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DataError(f"{url}: sha256 {sha256!r} is not 64 hex characters")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise DataError(f"{url}: unsupported URL scheme {scheme!r}, expected one of {list(SCHEMES)}")
    return sha256.lower()


def _stream(url: str, handle, timeout: float, desc: str) -> str:
    """Write the body of `url` to `handle`; return its sha256. Raises _Transient or DataError."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with progress(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                      leave=False) as bar:
                while block := response.read(CHUNK):
                    handle.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if err.code in RETRY_STATUS:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if urllib.parse.urlsplit(url).scheme == "file":
            raise DataError(f"{url}: {err.reason}") from None
        raise _Transient(f"{type(err.reason).__name__}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:  # timeouts, resets, IncompleteRead
        raise _Transient(f"{type(err).__name__}: {err}") from None
    if total is not None and received != total:
        raise _Transient(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _download_once(url: str, dest: Path, timeout: float) -> tuple[Path, str]:
    """One attempt into a hidden temp file beside `dest`; the temp file is removed on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            got = _stream(url, handle, timeout, dest.name)
        return Path(tmp), got
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_file(url: str, sha256: str, dest: Path, *, retries: int = 3, timeout: float = 30.0,
               backoff: float = 1.0) -> Path:
    """Download `url` to `dest` if its sha256 matches; retry network errors and 5xx `retries` times.

    (so at most retries + 1 attempts; 4xx and checksum mismatches are final). Waits backoff,
    2*backoff, 4*backoff ... seconds between attempts. A file already at
    `dest` with the right checksum is kept without any network access.
    """
    expected = _check_args(url, sha256)
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempts = max(1, retries + 1)
    for attempt in range(attempts):
        try:
            tmp, got = _download_once(url, dest, timeout)
            break
        except _Transient as err:
            if attempt + 1 == attempts:
                raise DataError(f"{url}: download failed after {attempts} attempt(s): {err}") from None
            wait = backoff * 2 ** attempt
            print(f"{url}: {err}; retrying in {wait:.1f} s ({attempt + 1}/{retries})", file=sys.stderr)
            time.sleep(wait)
    if got != expected:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{url}: sha256 mismatch: expected {expected}, got {got}; "
                        f"nothing written to {dest}")
    os.replace(tmp, dest)
    return dest
