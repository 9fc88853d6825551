"""Tiny ImageNet download path against a local HTTP server serving a miniature archive in the official layout."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sdn.data import load_prepared, prepare
from sdn.data.download import ChecksumError, parse_checksum, verify_checksum

WNIDS = ["n03000000", "n01000000", "n02000000"]  # deliberately unsorted in wnids.txt
COLOURS = {"n01000000": (220, 20, 20), "n02000000": (20, 220, 20), "n03000000": (20, 20, 220)}


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _tiny_zip() -> bytes:
    buffer = io.BytesIO()
    top = "tiny-imagenet-200"
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{top}/wnids.txt", "\n".join(WNIDS) + "\n")
        zf.writestr(f"{top}/words.txt", "".join(f"{w}\tthing {w}\n" for w in WNIDS))
        annotations = []
        for wnid in WNIDS:
            zf.writestr(f"{top}/train/{wnid}/{wnid}_boxes.txt", "")
            for i in range(4):
                zf.writestr(f"{top}/train/{wnid}/images/{wnid}_{i}.JPEG", _jpeg(COLOURS[wnid]))
        for j, wnid in enumerate(WNIDS * 2):
            name = f"val_{j}.JPEG"
            zf.writestr(f"{top}/val/images/{name}", _jpeg(COLOURS[wnid]))
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
        zf.writestr(f"{top}/val/val_annotations.txt", "".join(annotations))
        zf.writestr(f"{top}/test/images/test_0.JPEG", _jpeg((0, 0, 0)))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archive_bytes() -> bytes:
    return _tiny_zip()


@pytest.fixture()
def server(tmp_path: Path, archive_bytes: bytes) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny-imagenet-200.zip").write_bytes(archive_bytes)
    (served / "truncated.zip").write_bytes(archive_bytes[: len(archive_bytes) // 2])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            del format, args

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_download_intact_prepares_with_sorted_wnids(tmp_path: Path, server: str, archive_bytes: bytes) -> None:
    raw = tmp_path / "raw"
    out = prepare(
        "tinyimagenet",
        data_root=raw,
        out_dir=tmp_path / "tiny",
        url=f"{server}/tiny-imagenet-200.zip",
        checksum=_sha256(archive_bytes),
        holdout=3,
    )
    data = load_prepared(out)
    meta = data.meta
    assert meta["classes"] == sorted(WNIDS) and meta["num_classes"] == 3 and meta["input_size"] == 64
    assert meta["sizes"] == {"train": 9, "holdout": 3, "test": 6}
    assert (meta["crop_padding"], meta["color_jitter"]) == (8, 0.2)
    assert meta["mean"] == [0.4802, 0.4481, 0.3975]
    for split in ("train", "holdout", "test"):
        s = data.split(split)
        centre = s.images[:, :, 32, 32].int()
        expected = torch.tensor([COLOURS[meta["classes"][k]] for k in s.labels.tolist()])
        assert (centre - expected).abs().max() <= 8  # JPEG is lossy
    assert torch.bincount(data.split("test").labels).tolist() == [2, 2, 2]
    assert (raw / "tiny-imagenet-200.zip").is_file() and (raw / "tiny-imagenet-200" / "wnids.txt").is_file()
    # the val images were mapped, not moved: the extracted tree is unchanged
    assert len(list((raw / "tiny-imagenet-200" / "val" / "images").iterdir())) == 6


@pytest.mark.parametrize("served", ["truncated.zip", "tiny-imagenet-200.zip"])
def test_download_corrupt_is_rejected_and_removed(
    tmp_path: Path, server: str, archive_bytes: bytes, served: str
) -> None:
    raw = tmp_path / "raw"
    expected = hashlib.sha256(archive_bytes).hexdigest()
    checksum = "sha256:" + expected if served == "truncated.zip" else "sha256:" + "0" * 64
    with pytest.raises(ChecksumError) as err:
        prepare("tinyimagenet", data_root=raw, out_dir=tmp_path / "tiny", url=f"{server}/{served}", checksum=checksum)
    message = str(err.value)
    actual = hashlib.sha256(archive_bytes[: len(archive_bytes) // 2] if served == "truncated.zip" else archive_bytes)
    assert "tiny-imagenet-200.zip" in message and checksum.split(":")[1] in message and actual.hexdigest() in message
    assert "removed" in message
    assert not (raw / "tiny-imagenet-200.zip").exists() and not (raw / "tiny-imagenet-200").exists()
    assert not (tmp_path / "tiny").exists()
    assert not raw.exists() or not any(raw.iterdir())  # no partial download or extraction left


def test_cached_corrupt_archive_is_replaced(tmp_path: Path, server: str, archive_bytes: bytes) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "tiny-imagenet-200.zip").write_bytes(b"garbage")
    prepare(
        "tinyimagenet",
        data_root=raw,
        out_dir=tmp_path / "tiny",
        url=f"{server}/tiny-imagenet-200.zip",
        checksum=_sha256(archive_bytes),
        holdout=3,
    )
    assert (raw / "tiny-imagenet-200.zip").read_bytes() == archive_bytes


def test_local_zip_offline(tmp_path: Path, archive_bytes: bytes) -> None:
    local = tmp_path / "copy.zip"
    local.write_bytes(archive_bytes)
    dead = "http://127.0.0.1:9/tiny-imagenet-200.zip"
    out = prepare(
        "tinyimagenet",
        data_root=tmp_path / "raw",
        out_dir=tmp_path / "tiny",
        url=dead,
        local_path=local,
        checksum=_sha256(archive_bytes),
        holdout=3,
    )
    assert load_prepared(out).meta["sizes"]["test"] == 6
    bad = tmp_path / "bad.zip"
    bad.write_bytes(archive_bytes[:100])
    with pytest.raises(ChecksumError, match="bad.zip"):
        prepare(
            "tinyimagenet",
            data_root=tmp_path / "raw2",
            out_dir=tmp_path / "t2",
            local_path=bad,
            checksum=_sha256(archive_bytes),
        )
    assert bad.exists()  # a user's own file is reported, never deleted


def test_offline_without_copy_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        prepare(
            "tinyimagenet",
            data_root=tmp_path / "raw",
            out_dir=tmp_path / "tiny",
            url="http://127.0.0.1:9/tiny-imagenet-200.zip",
        )
    message = str(err.value)
    assert str(tmp_path / "raw") in message and "--local-path" in message and "tiny-imagenet-200.zip" in message
    assert not (tmp_path / "tiny").exists()


def test_checksum_parsing_and_verification(tmp_path: Path) -> None:
    assert parse_checksum("ABCDEF") == ("sha256", "abcdef")
    assert parse_checksum("md5:00ff") == ("md5", "00ff")
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        parse_checksum("crc99:00")
    with pytest.raises(ValueError, match="not a hex digest"):
        parse_checksum("sha256:xyz")
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    verify_checksum(f, "md5:5d41402abc4b2a76b9719d911017c592")
    with pytest.raises(ChecksumError, match="expected md5 00"):
        verify_checksum(f, "md5:00")
