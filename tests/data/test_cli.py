"""``dynroute data fetch|info`` end to end: output, exit status, error messages."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
import time

import pytest

from dynroute import cli
from dynroute.data import download, sources


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the CLI with only the data commands wired in; return (status, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["data"])

    def run(*argv: str) -> tuple[int, str, str]:
        status = cli.main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_info_lists_datasets_and_sources(tmp_path, make_mnist, cache_dir, run_cli):
    make_mnist(tmp_path)
    status, out, _ = run_cli("data", "info", "--data-dir", str(tmp_path))
    assert status == 0
    assert "hybrid" in out and "cifar2" in out
    assert "MNIST: idx at" in out and "CIFAR-10: not found" in out
    assert f"dataset cache: {cache_dir}" in out


def test_info_dataset_prints_counts(tmp_path, make_mnist, make_cifar, cache_dir, run_cli):
    make_mnist(tmp_path)
    make_cifar(tmp_path, as_zip=True)
    status, out, _ = run_cli("data", "info", "hybrid", "--data-dir", str(tmp_path))
    assert status == 0
    assert "train" in out and "per class: 2 2 2 2 2 2 2 2 2 2" in out
    assert "5=airplane" in out and "image-zip" in out and str(cache_dir) in out


def test_info_errors_exit_2(tmp_path, cache_dir, run_cli):
    status, _, err = run_cli("data", "info", "svhn", "--data-dir", str(tmp_path))
    assert status == 2 and "dynroute: error: unknown dataset 'svhn'" in err
    status, _, err = run_cli("data", "info", "mnist", "--data-dir", str(tmp_path / "missing"))
    assert status == 2 and "does not exist" in err and "Traceback" not in err


def test_info_checksum_flag(tmp_path, make_mnist, cache_dir, run_cli):
    make_mnist(tmp_path, trusted=False)
    status, _, err = run_cli("data", "info", "mnist", "--data-dir", str(tmp_path))
    assert status == 2 and "checksum mismatch" in err
    status, out, _ = run_cli(
        "data", "info", "mnist", "--data-dir", str(tmp_path), "--allow-checksum-mismatch"
    )
    assert status == 0 and "MISMATCH ALLOWED" in out


def test_fetch_offline_fails_fast(tmp_path, monkeypatch, run_cli):
    # Port 9 (discard) on localhost refuses connections: a stand-in for "no internet".
    monkeypatch.setattr(
        download, "MNIST_MIRRORS", ("http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/")
    )
    started = time.monotonic()
    status, _, err = run_cli("data", "fetch", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert time.monotonic() - started < 10
    assert status == 2 and "could not download train-images-idx3-ubyte.gz" in err
    assert "http://127.0.0.1:9/a/train-images-idx3-ubyte.gz" in err
    assert "--data-dir" in err and "DYNROUTE_DATA" in err
    assert not list(tmp_path.rglob("*.gz")) and not list(tmp_path.rglob(".*"))


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server serving gzipped fake MNIST files from tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def serve_fake_mnist(served, monkeypatch) -> dict[str, str]:
    """Put gzipped fake MNIST files on the mirror and trust their MD5s."""
    table = {}
    for name in sources.MNIST_MD5:
        content = f"fake {name}".encode()
        (served / f"{name}.gz").write_bytes(gzip.compress(content))
        table[name] = hashlib.md5(content).hexdigest()
    monkeypatch.setattr(sources, "MNIST_MD5", table)
    return table


def test_fetch_downloads_verifies_and_skips(tmp_path, monkeypatch, mirror, run_cli):
    served, url = mirror
    table = serve_fake_mnist(served, monkeypatch)
    monkeypatch.setattr(download, "MNIST_MIRRORS", ("http://127.0.0.1:9/", url))
    target = tmp_path / "data"
    status, out, err = run_cli("data", "fetch", "--dataset", "mnist", "--data-dir", str(target))
    assert status == 0 and out.count("downloaded, checksum OK") == 4, err
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(
        f"{name}.gz" for name in table
    )
    status, out, _ = run_cli("data", "fetch", "--dataset", "mnist", "--data-dir", str(target))
    assert status == 0 and out.count("already present, OK") == 4


def test_fetch_rejects_wrong_checksum(tmp_path, monkeypatch, mirror, run_cli):
    served, url = mirror
    (served / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    monkeypatch.setattr(download, "MNIST_MIRRORS", (url,))
    target = tmp_path / "data"
    status, _, err = run_cli("data", "fetch", "--dataset", "mnist", "--data-dir", str(target))
    assert status == 2 and "wrong MD5" in err and "expected 6bbc9ace898e44ae57da46a324031adb" in err
    assert not [p for p in target.rglob("*") if p.is_file()]  # no half-downloaded file left


def test_fetch_into_unwritable_destination(tmp_path, monkeypatch, mirror, run_cli):
    served, url = mirror
    serve_fake_mnist(served, monkeypatch)
    monkeypatch.setattr(download, "MNIST_MIRRORS", (url,))
    blocked = tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz"
    blocked.mkdir(parents=True)  # a folder where the file should go
    status, _, err = run_cli(
        "data", "fetch", "--dataset", "mnist", "--data-dir", str(tmp_path / "data")
    )
    assert status == 2 and f"cannot write {blocked}" in err and "Traceback" not in err
