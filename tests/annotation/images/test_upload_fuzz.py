"""Hostile uploads through the views people actually post to: the admin's image import (one file or a ZIP) and the
cleaning preview. Each gets a clear 4xx naming what is wrong, and nothing is stored: no rows, no files."""

import html
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotation.models import Image as StoredImage
from tests.annotation.images.test_uploads import _forged_png, _symlink, dicom_bytes, make_dicom, png_bytes

pytestmark = pytest.mark.django_db

GOOD = png_bytes(Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)))
DICOM = dicom_bytes(make_dicom())


def _broken_png() -> bytes:
    """GOOD with its image data split over two chunks, the second of a type that is not letters: Pillow raises
    SyntaxError ("broken PNG file") while decoding, not OSError."""
    chunks, pos = [], 8
    while pos < len(GOOD):
        length, kind = struct.unpack(">I4s", GOOD[pos : pos + 8])
        chunks.append((kind, GOOD[pos + 8 : pos + 8 + length]))
        pos += 12 + length

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = b"".join(body for kind, body in chunks if kind == b"IDAT")
    half = len(data) // 2
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", chunks[0][1]) + chunk(b"IDAT", data[:half])
            + chunk(b"\x00\x01\x02\x03", data[half:]) + chunk(b"IEND", b""))


#: name → (bytes, what the refusal must say)
FILES = {
    "corrupt.png": (GOOD[:40] + b"\x00garbage" * 20, "corrupt or truncated PNG: the decoder cannot read its header"),
    "truncated.png": (GOOD[: len(GOOD) // 2], "corrupt or truncated PNG"),
    "truncated.dcm": (DICOM[:200], "DICOM file holds no image"),
    "cut.dcm": (DICOM[:-500], "cannot decode the DICOM pixel data (Explicit VR Little Endian): The number of bytes"),
    "broken.png": (_broken_png(), "corrupt or truncated PNG: broken PNG file"),
    "bomb.png": (png_bytes(Image.new("1", (8000, 8000))), "over the 40000000-pixel limit (decompression bomb?)"),
    "forged.png": (_forged_png(30000, 30000), "decompression bomb"),
    "page.png": (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "not a PNG, JPEG or DICOM file"),
    "drawing.png": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
                    "not a PNG, JPEG or DICOM file"),
    "xray.jpg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a PNG, JPEG or DICOM file"),
    "empty.png": (b"", "empty"),
}


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


#: whole archives refused before anything is read out of them
ARCHIVES = {
    "traversal.zip": (_zip([("ok.png", GOOD), ("../../evil.png", GOOD)]), "'..'"),
    "absolute.zip": (_zip([("/etc/cron.d/evil.png", GOOD)]), "absolute path"),
    "windows.zip": (_zip([("..\\..\\evil.png", GOOD)]), "'..'"),
    "link.zip": (_zip([(_symlink("link.png"), b"/etc/passwd")]), "symbolic link"),
    "bomb.zip": (_zip([("bomb.png", b"\0" * (8 * 1024 * 1024))]), "zip bomb"),
    "disguised.zip": (_zip([("page.png", FILES["page.png"][0]), ("drawing.png", FILES["drawing.png"][0])]),
                      "not a PNG, JPEG or DICOM file"),
}


def _files(media: Path) -> list[Path]:
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


@pytest.fixture
def upload(make_study, admin_client, settings):
    study = make_study()
    media = Path(settings.MEDIA_ROOT)

    def post(name: str, data: bytes, url: str | None = None, stores: bool = False):
        before = (StoredImage.objects.count(), _files(media),
                  )
        handle = io.BytesIO(data)
        handle.name = name
        field = "image" if url else "archive"
        response = admin_client.post(url or f"/admin/annotation/study/{study.pk}/import/", {field: handle})
        if not stores:
            assert StoredImage.objects.count() == before[0] and _files(media) == before[1], name  # nothing stored
        return response, before

    return post


@pytest.mark.parametrize("name", sorted(FILES) + sorted(ARCHIVES))
def test_a_hostile_file_or_archive_is_refused_with_its_reason(upload, name):
    data, reason = {**FILES, **ARCHIVES}[name]
    response, _ = upload(name, data)
    assert response.status_code == 400, name
    assert reason in html.unescape(response.content.decode())


@pytest.mark.parametrize(("name", "reason"), [
    ("corrupt.png", "Could not read the image: not a PNG or JPEG file"),
    ("truncated.png", "Could not read the image: corrupt or truncated"),
    ("bomb.png", "Could not read the image: 8000x8000 pixels, over the"),
    ("forged.png", "Could not read the image: too large to decode safely"),
    ("page.png", "Could not read the image: not a PNG or JPEG file"),
    ("drawing.png", "Could not read the image: not a PNG or JPEG file"),
    ("truncated.dcm", "DICOM files go through the study's import page"),
    ("empty.png", "The submitted file is empty."),
    ("broken.png", "Could not read the image: corrupt or truncated (broken PNG file"),
])
def test_the_cleaning_preview_refuses_hostile_files_too(upload, name, reason):
    response, _ = upload(name, FILES[name][0], url="/tools/clean/")
    text = html.unescape(response.content.decode())
    assert response.status_code == 400 and reason in text, text[text.find("errorlist"):][:300]


def test_a_good_file_after_the_hostile_ones_still_imports(upload):
    for name in ("page.png", "bomb.png"):
        upload(name, FILES[name][0])
    response, before = upload("good.png", GOOD, stores=True)
    assert response.status_code == 200 and "1 imported" in response.content.decode()
    assert StoredImage.objects.count() == before[0] + 1


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_practice_set_upload_refuses_hostile_files_as_the_import_does(make_study, admin_client, settings, name):
    from annotation.models import PracticeCase

    study = make_study()
    media = Path(settings.MEDIA_ROOT)
    before = _files(media)
    data, reason = FILES[name]
    handle = io.BytesIO(data)
    handle.name = name
    response = admin_client.post(f"/dashboard/studies/{study.pk}/practice/", {"images": handle, "answer": "real"})
    text = html.unescape(response.content.decode())
    assert response.status_code == 400 and f"refused: {name}: " in text and reason in text
    assert not PracticeCase.objects.exists() and _files(media) == before
