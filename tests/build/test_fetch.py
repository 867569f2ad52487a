"""fetch.py: relative paths, file:// and http(s) URIs, checksum mismatch, cache by digest."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbuilder.errors import FetchError
from localbuilder.fetch import FetchRequest, fetch, fetch_all
from localbuilder.redact import hide_query


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_relative_path_resolved_against_template_dir(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "a.sh").write_bytes(b"echo a\n")
    got = fetch(FetchRequest("scripts/a.sh", sha(b"echo a\n"), "customize[0].scriptUri"), base_dir=tmp_path)
    assert got.path.read_bytes() == b"echo a\n"
    assert got.path.name == sha(b"echo a\n")


def test_file_uri_and_uppercase_digest(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes(b"data")
    got = fetch(FetchRequest(f.as_uri(), sha(b"data").upper(), "w"), base_dir=Path("/"))
    assert got.sha256 == sha(b"data")


def test_mismatch_names_both_digests(tmp_path: Path) -> None:
    f = tmp_path / "x.sh"
    f.write_bytes(b"new content")
    wrong = sha(b"old content")
    with pytest.raises(FetchError) as err:
        fetch(FetchRequest("x.sh", wrong, "properties.customize[1].scriptUri"), base_dir=tmp_path)
    text = str(err.value)
    assert "properties.customize[1].scriptUri" in text
    assert wrong in text and sha(b"new content") in text
    assert err.value.hint and "sha256Checksum" in err.value.hint


def test_http_download_then_cache_hit_without_origin(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "s.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    digest = sha(b"#!/bin/sh\necho hi\n")
    first = fetch(FetchRequest(f"{base}/s.sh?sig=SECRET", digest, "w"), base_dir=Path("/"))
    assert not first.cached
    (root / "s.sh").unlink()  # the origin is gone: a checksum-pinned input still comes from the cache
    second = fetch(FetchRequest(f"{base}/s.sh?sig=SECRET", digest, "w"), base_dir=Path("/"))
    assert second.cached and second.path.read_bytes() == b"#!/bin/sh\necho hi\n"


def test_http_404_is_a_fetch_error_without_secrets(http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    with pytest.raises(FetchError, match="HTTP 404") as err:
        fetch(FetchRequest(f"{base}/missing.sh?sig=SECRET", None, "w"), base_dir=Path("/"))
    assert "SECRET" not in str(err.value)


def test_all_failures_reported_together(tmp_path: Path) -> None:
    (tmp_path / "ok.sh").write_bytes(b"ok")
    reqs = [
        FetchRequest("missing1.sh", None, "properties.customize[0].scriptUri"),
        FetchRequest("ok.sh", None, "properties.customize[1].scriptUri"),
        FetchRequest("missing2.sh", None, "properties.customize[2].scriptUri"),
        FetchRequest("ok.sh", "zz", "properties.customize[3].scriptUri"),
    ]
    with pytest.raises(FetchError) as err:
        fetch_all(reqs, base_dir=tmp_path)
    text = str(err.value)
    assert "customize[0]" in text and "customize[2]" in text and "customize[3]" in text
    assert "not a SHA-256 hex digest" in text


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="unsupported URI scheme 'ftp'"):
        fetch(FetchRequest("ftp://example.org/x.sh", None, "w"), base_dir=tmp_path)


def test_query_hidden_in_messages() -> None:
    assert (
        hide_query("https://a.blob.core.windows.net/c/x.sh?sv=1&sig=abc")
        == "https://a.blob.core.windows.net/c/x.sh?…"
    )
