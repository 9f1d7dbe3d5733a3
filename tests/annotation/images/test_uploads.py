import io
import re
import stat
import struct
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from annotation.images.deidentify import BASIC_PROFILE_TAGS, deidentify_dataset
from annotation.images.uploads import (
    NOT_AN_IMAGE,
    ArchiveRejected,
    ImageRejected,
    IngestLimits,
    decode_image,
    iter_archive,
    read_member,
)

PHI = {
    "PatientName": "Doe^Johnathan",
    "PatientID": "MRN99887766",
    "PatientBirthDate": "19510317",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "Kildare^James",
    "AccessionNumber": "ACC5550123",
    "StudyDate": "20240219",
    "OtherPatientIDs": "ALT4433221",
    "PatientAddress": "12 Elm Street Springfield",
    "OperatorsName": "Ratched^Mildred",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN-000-4242",
    "StudyDescription": "CHEST PA for Johnathan",
}
PRIVATE_NAME = "Private^Pamela"
RECIPIENT = "Recipient^Rita"


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_dicom(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME1",
    window: tuple[float, float] | None = (2048.0, 1024.0),
    frames: int = 1,
) -> pydicom.Dataset:
    if pixels is None:
        pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095, a 12-bit ramp
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.Modality, ds.ViewPosition, ds.BurnedInAnnotation = "DX", "PA", "NO"
    block = ds.private_block(0x0011, "ACME Vendor", create=True)
    block.add_new(0x01, "PN", PRIVATE_NAME)
    seq_item = pydicom.Dataset()
    seq_item.PatientName = PHI["PatientName"]
    seq_item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedPatientSequence = [seq_item]
    code = pydicom.Dataset()
    code.CodeValue, code.NamesOfIntendedRecipientsOfResults = "36643-5", RECIPIENT
    ds.ProcedureCodeSequence = [code]  # not in Annex E, but a person name inside must still go
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    buf.seek(0)
    return buf


# --- PNG / JPEG --------------------------------------------------------------------------------
def test_png_8bit_gray():
    arr = np.tile(np.arange(256, dtype=np.uint8), (10, 1))
    out = decode_image(png_bytes(Image.fromarray(arr)), filename="a.png")
    assert (out.fmt, out.width, out.height) == ("png", 256, 10)
    assert out.pixels.dtype == np.float32 and out.pixels.shape == (10, 256)
    assert out.pixels[0, 0] == 0.0 and out.pixels[0, 255] == 1.0
    assert out.pixels[0, 128] == pytest.approx(128 / 255)
    assert out.deid_removed == () and not out.burned_in_phi


def test_png_16bit_uses_full_range():
    arr = np.array([[0, 4095, 32768, 65535]], dtype=np.uint16)
    out = decode_image(png_bytes(Image.fromarray(arr)), filename="deep.png")
    assert out.metadata["bits"] == 16
    np.testing.assert_allclose(out.pixels[0], [0.0, 4095 / 65535, 32768 / 65535, 1.0], rtol=1e-6)


def test_rgb_jpeg_becomes_gray():
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[:, 24:] = 255
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    out = decode_image(buf.getvalue(), filename="photo.jpg")
    assert (out.fmt, out.pixels.shape) == ("jpeg", (32, 48))
    assert out.pixels[:, :20].max() < 0.05 and out.pixels[:, 28:].min() > 0.95


def test_rgba_png_becomes_gray():
    rgba = np.full((8, 8, 4), 200, dtype=np.uint8)
    out = decode_image(png_bytes(Image.fromarray(rgba)), filename="a.png")
    assert out.pixels.shape == (8, 8) and out.pixels[0, 0] == pytest.approx(200 / 255, abs=1e-3)


def test_truncated_png_rejected():
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(ImageRejected, match="corrupt or truncated PNG"):
        decode_image(data[: len(data) // 2], filename="cut.png")


@pytest.mark.parametrize(
    "data",
    [
        b"<html><body>hello</body></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>',
        bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
        b"",
        b"\x00" * 128 + b"DICX" + b"\x00" * 64,
    ],
)
def test_non_images_named_png_rejected(data):
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, filename="x.png")
    assert exc.value.reason in (NOT_AN_IMAGE, "file is empty")
    assert exc.value.filename == "x.png"


def _forged_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_real_decompression_bomb_png_rejected():
    data = png_bytes(Image.new("1", (8000, 8000)))  # 64 Mpx in a few kilobytes
    assert len(data) < 100_000
    with pytest.raises(ImageRejected, match="8000x8000 pixels, over the 10000000-pixel limit"):
        decode_image(data, filename="bomb.png", limits=IngestLimits(max_pixels=10_000_000))


@pytest.mark.parametrize("side", [7000, 30000])  # under and over Pillow's own bomb threshold
def test_forged_header_bomb_rejected_before_decoding(side):
    with pytest.raises(ImageRejected, match="40000000-pixel limit"):
        decode_image(_forged_png(side, side), filename="forged.png")


def test_oversized_file_rejected():
    data = png_bytes(Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(ImageRejected, match="over the 100 bytes limit"):
        decode_image(data, filename="big.png", limits=IngestLimits(max_file_bytes=100))
    with pytest.raises(ImageRejected, match="file is 210 MB, over the 64 MB limit"):
        decode_image(b"\0" * (210 * 1024 * 1024), filename="huge.png")


# --- DICOM -------------------------------------------------------------------------------------
def test_dicom_monochrome1_is_windowed_and_inverted():
    out = decode_image(dicom_bytes(make_dicom()), filename="cxr.dcm")
    assert (out.fmt, out.width, out.height) == ("dicom", 64, 64)
    flat = out.pixels.ravel()  # stored values 0..4095; window 1536..2560
    assert flat[0] == 1.0 and flat[1536] == 1.0  # below the window: white after inversion
    assert flat[2560] == 0.0 and flat[4095] == 0.0  # above the window: black
    assert flat[2048] == pytest.approx(0.5, abs=0.01)
    assert np.all(np.diff(flat[1536:2561]) <= 0)  # monotone decreasing through the window
    assert out.metadata["window"] == "window" and out.metadata["photometric"] == "MONOCHROME1"
    assert out.metadata["modality"] == "DX" and out.metadata["view_position"] == "PA"
    assert not out.burned_in_phi


def test_dicom_without_window_uses_percentiles_and_rescale():
    ds = make_dicom(photometric="MONOCHROME2", window=None)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    out = decode_image(dicom_bytes(ds), filename="cxr.dcm")
    flat = out.pixels.ravel()
    assert out.metadata["window"] == "percentile"
    assert flat[0] == 0.0 and flat[-1] == 1.0 and flat[2048] == pytest.approx(0.5, abs=0.01)


def test_dicom_voi_lut_sequence_is_applied():
    ds = make_dicom(photometric="MONOCHROME2", window=None)
    lut = pydicom.Dataset()
    lut.LUTDescriptor, lut.LUTData = [4096, 0, 12], np.arange(4095, -1, -1, dtype=np.uint16).tobytes()
    ds.VOILUTSequence = [lut]  # an inverting LUT
    flat = decode_image(dicom_bytes(ds), filename="lut.dcm").pixels.ravel()
    assert flat[0] == 1.0 and flat[4095] == 0.0 and flat[2048] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless, RLELossless])
def test_undecodable_compressed_dicom_rejected(syntax):
    ds = make_dicom()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"not a codestream" * 8])
    with pytest.raises(ImageRejected, match=re.escape(f"no installed decoder can read this DICOM's pixel data, encoded as {syntax.name}")):
        decode_image(dicom_bytes(ds), filename="c.dcm")


def test_dicom_decode_removes_phi():
    out = decode_image(dicom_bytes(make_dicom()), filename="cxr.dcm")
    for keyword in ("PatientName", "PatientID", "InstitutionName", "OtherPatientIDs", "(0011,1001)"):
        assert keyword in out.deid_removed
    assert "ReferencedPatientSequence" in out.deid_removed and "SOPInstanceUID" in out.deid_removed
    text = repr(out.metadata)
    assert not any(value in text for value in [*PHI.values(), PRIVATE_NAME])


def test_deidentify_dataset_leaves_no_phi_in_written_bytes():
    ds = make_dicom()
    original_uids = [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
    raw = dicom_bytes(ds)
    assert all(value.encode() in raw for value in PHI.values())  # the test data really holds PHI
    removed = deidentify_dataset(ds)
    clean = dicom_bytes(ds)
    for value in [*PHI.values(), PRIVATE_NAME, RECIPIENT, *original_uids, "Johnathan", "ACME Vendor"]:
        assert value.encode() not in clean, value
    assert "PatientName" in removed and "(0011,0010)" in removed
    again = pydicom.dcmread(io.BytesIO(clean))
    assert again.PatientName == "" and "PatientBirthDate" in again and again.PatientIdentityRemoved == "YES"
    assert again.SOPInstanceUID == again.file_meta.MediaStorageSOPInstanceUID != original_uids[0]
    assert again.PhotometricInterpretation == "MONOCHROME1"  # pixel description untouched
    assert again.ProcedureCodeSequence[0].CodeValue == "36643-5"  # harmless content is kept


def test_basic_profile_is_thorough():
    assert len(BASIC_PROFILE_TAGS) > 150 and len(set(BASIC_PROFILE_TAGS)) == len(BASIC_PROFILE_TAGS)
    for keyword in (
        "PatientSex",
        "PatientAge",
        "AccessionNumber",
        "InstitutionAddress",
        "RequestAttributesSequence",
    ):
        assert keyword in BASIC_PROFILE_TAGS


def test_burned_in_annotation_flag():
    ds = make_dicom()
    ds.BurnedInAnnotation = "YES"
    assert decode_image(dicom_bytes(ds), filename="a.dcm").burned_in_phi
    ds = make_dicom()
    del ds.BurnedInAnnotation
    ds.Modality = "SC"  # a secondary capture with no statement: assume text may be burned in
    assert decode_image(dicom_bytes(ds), filename="a.dcm").burned_in_phi


def test_truncated_dicom_rejected():
    data = dicom_bytes(make_dicom())
    for cut in (len(data) - 500, 200):
        with pytest.raises(ImageRejected) as exc:
            decode_image(data[:cut], filename="cut.dcm")
        assert "DICOM" in exc.value.reason


def test_multiframe_dicom_rejected():
    with pytest.raises(ImageRejected, match="multi-frame DICOM \\(3 frames\\)"):
        decode_image(dicom_bytes(make_dicom(frames=3)), filename="cine.dcm")


def test_dicom_pixel_limit_checked_from_header():
    with pytest.raises(ImageRejected, match="64x64 pixels, over the 1000-pixel limit"):
        decode_image(dicom_bytes(make_dicom()), filename="a.dcm", limits=IngestLimits(max_pixels=1000))


def test_dicom_without_pixels_rejected():
    ds = make_dicom()
    del ds.PixelData
    with pytest.raises(ImageRejected, match="holds no image \\(Pixel Data missing\\)"):
        decode_image(dicom_bytes(ds), filename="sr.dcm")


# --- archives ----------------------------------------------------------------------------------
def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entries", "limits", "match"),
    [
        ([("ok.png", b"x"), ("../evil.png", b"x")], IngestLimits(), "'..'"),
        ([("a/../../evil.png", b"x")], IngestLimits(), "'..'"),
        ([("..\\..\\evil.png", b"x")], IngestLimits(), "'..'"),
        ([("/abs.png", b"x")], IngestLimits(), "absolute"),
        ([("C:\\abs.png", b"x")], IngestLimits(), "absolute"),
        ([(_symlink("link.png"), b"/etc/passwd")], IngestLimits(), "symbolic link"),
        ([(f"{i}.png", b"x") for i in range(6)], IngestLimits(max_archive_entries=5), "6 entries"),
        ([("a.png", b"x" * 600), ("b.png", b"y" * 600)], IngestLimits(max_archive_bytes=1000), "unpacks to"),
        ([("bomb.png", b"\0" * (4 * 1024 * 1024))], IngestLimits(), "zip bomb"),
        ([("bomb.png", b"\0" * 100_000)], IngestLimits(max_ratio=10, ratio_min_bytes=1000), "zip bomb"),
    ],
)
def test_bad_archives_rejected(entries, limits, match):
    with pytest.raises(ArchiveRejected, match=match):
        iter_archive(zip_bytes(entries), limits=limits)


def test_encrypted_entry_rejected():
    data = bytearray(zip_bytes([("secret.png", b"x")]).getvalue())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # zipfile cannot encrypt
        at = data.index(signature) + flag_offset
        data[at] |= 0x1
    with pytest.raises(ArchiveRejected, match="encrypted"):
        iter_archive(io.BytesIO(bytes(data)))


def test_duplicate_entry_names_rejected():
    with pytest.warns(UserWarning, match="Duplicate name"):
        buf = zip_bytes([("a.png", b"harmless"), ("a.png", b"shadowing")])
    with pytest.raises(ArchiveRejected, match="twice"):
        iter_archive(buf)


def test_not_a_zip_rejected():
    with pytest.raises(ArchiveRejected, match="not a valid ZIP"):
        iter_archive(io.BytesIO(b"PK\x03\x04 nope"))


def test_good_archive_lists_images_and_reads_them(tmp_path):
    png = png_bytes(Image.new("L", (16, 16), 128))
    dcm = dicom_bytes(make_dicom())
    path = tmp_path / "upload.zip"
    path.write_bytes(
        zip_bytes(
            [
                ("study/", b""),
                ("study/a.png", png),
                ("study/nested/b.dcm", dcm),
                ("__MACOSX/study/._a.png", b"\0\x05\x16\x07junk"),
                ("study/._b.dcm", b"junk"),
                (".DS_Store", b"junk"),
            ]
        ).getvalue()
    )
    members = iter_archive(str(path))
    assert [(m.name, m.size) for m in members] == [
        ("study/a.png", len(png)),
        ("study/nested/b.dcm", len(dcm)),
    ]
    with zipfile.ZipFile(path) as zf:
        decoded = [decode_image(read_member(zf, m), filename=m.name) for m in members]
    assert [d.fmt for d in decoded] == ["png", "dicom"]


def test_read_member_enforces_size_while_reading():
    buf = zip_bytes([("big.png", b"\0" * 5000)])
    member = iter_archive(buf)[0]
    limits = IngestLimits(max_file_bytes=1000)
    with zipfile.ZipFile(buf) as zf:
        with pytest.raises(ImageRejected, match="over the 1000 bytes limit"):
            read_member(zf, member, limits)
        lying = type(member)(name=member.name, size=10)  # a header that understates the size
        with pytest.raises(ImageRejected, match="over the 1000 bytes limit"):
            read_member(zf, lying, limits)
