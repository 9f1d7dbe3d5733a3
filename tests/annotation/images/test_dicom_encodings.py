"""Real archives' DICOM: every common encoding decodes to the same pixels as its uncompressed twin (and to the
expected values at known positions), palette colour goes through its LUT, files without a preamble are read,
and a study's modality/view rules refuse what is not a chest radiograph, per file, before any pixel is decoded."""

import io
import re
from pathlib import Path

import gdcm
import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from annotation.images.uploads import AcceptRules, ImageRejected, decode_image
from tests.annotation.images.test_uploads import dicom_bytes, make_dicom

RAMP = (np.arange(48 * 64, dtype=np.int64).reshape(48, 64) * 37 % 4096).astype(np.uint16)  # 12-bit, not smooth


def base(photometric: str = "MONOCHROME2") -> pydicom.Dataset:
    ds = make_dicom(RAMP, photometric=photometric, window=(2048.0, 4096.0))
    ds.Modality, ds.ViewPosition = "CR", "PA"
    return ds


def pydicom_encoded(syntax) -> bytes:
    ds = base()
    ds.compress(syntax)  # RLE (pydicom), JPEG-LS (CharLS via pyjpegls), JPEG 2000 (OpenJPEG)
    return dicom_bytes(ds)


def gdcm_encoded(ds: pydicom.Dataset, syntax: int, tmp_path: Path) -> bytes:
    """Transcode with GDCM, as a PACS would have stored it (JPEG Lossless, JPEG Extended, big endian)."""
    src, dst = tmp_path / "src.dcm", tmp_path / "dst.dcm"
    src.write_bytes(dicom_bytes(ds))
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return dst.read_bytes()


def expected(ramp: np.ndarray = RAMP) -> np.ndarray:
    """The linear window (2048, 4096) over a 12-bit ramp: value / 4095 to within 1/4095."""
    return ramp.astype(np.float64) / 4095.0


LOSSLESS = {
    "rle": lambda tmp: pydicom_encoded(RLELossless),
    "jpeg-ls": lambda tmp: pydicom_encoded(JPEGLSLossless),
    "jpeg2000": lambda tmp: pydicom_encoded(JPEG2000Lossless),
    "jpeg-lossless-p14": lambda tmp: gdcm_encoded(base(), gdcm.TransferSyntax.JPEGLosslessProcess14_1, tmp),
    "jpeg-lossless-p14-sv1": lambda tmp: gdcm_encoded(base(), gdcm.TransferSyntax.JPEGLosslessProcess14, tmp),
    "big-endian": lambda tmp: gdcm_encoded(base(), gdcm.TransferSyntax.ExplicitVRBigEndian, tmp),
    "implicit-little-endian": lambda tmp: gdcm_encoded(base(), gdcm.TransferSyntax.ImplicitVRLittleEndian, tmp),
}


@pytest.mark.parametrize("encoding", sorted(LOSSLESS))
def test_every_lossless_encoding_decodes_to_its_uncompressed_twin(encoding, tmp_path):
    data = LOSSLESS[encoding](tmp_path)
    syntax = pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    twin = decode_image(dicom_bytes(base()), filename="twin.dcm")
    out = decode_image(data, filename=f"{encoding}.dcm")
    assert out.metadata["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(out.pixels, twin.pixels)
    np.testing.assert_allclose(out.pixels, expected(), atol=1.5 / 4095)
    assert out.pixels[0, 1] == pytest.approx(37 / 4095, abs=1e-3) and out.pixels[1, 0] == pytest.approx(
        (64 * 37 % 4096) / 4095, abs=1e-3)


def test_jpeg_extended_12_bit_is_decoded_by_gdcm(tmp_path):
    """pydicom's plugins refuse 12-bit JPEG Extended unless the GPL libjpeg is installed; GDCM reads it."""
    smooth = (np.add.outer(np.arange(48), np.arange(64)) * 36).astype(np.uint16)  # lossy: a smooth image
    ds = make_dicom(smooth, photometric="MONOCHROME2", window=(2048.0, 4096.0))
    data = gdcm_encoded(ds, gdcm.TransferSyntax.JPEGExtendedProcess2_4, tmp_path)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit
    out = decode_image(data, filename="jpeg12.dcm")
    np.testing.assert_allclose(out.pixels, expected(smooth), atol=8 / 4095)  # lossy, but close
    assert out.pixels[47, 63] == pytest.approx(110 * 36 / 4095, abs=8 / 4095)


def test_monochrome1_is_inverted_in_every_encoding(tmp_path):
    ds = base("MONOCHROME1")
    ds.compress(JPEG2000Lossless)
    out = decode_image(dicom_bytes(ds), filename="m1.dcm")
    np.testing.assert_allclose(out.pixels, 1.0 - expected(), atol=1.5 / 4095)


def test_palette_colour_goes_through_its_lookup_table():
    index = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    ds = make_dicom(index, photometric="PALETTE COLOR", window=None)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = index.tobytes()
    inverted = ((255 - np.arange(256)) * 257).astype("<u2")  # index i shows grey 255 - i: not the indices
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", inverted.tobytes())
    out = decode_image(dicom_bytes(ds), filename="palette.dcm")
    np.testing.assert_allclose(out.pixels, (255 - index) / 255.0, atol=1e-4)
    assert out.pixels[0, 0] == pytest.approx(1.0) and out.pixels[0, 255 % 32] == pytest.approx((255 - 31) / 255)


def test_a_dicom_file_without_its_preamble_is_read():
    ds = base()
    with_meta = dicom_bytes(ds)[132:]  # file meta (group 2) first, no 128-byte preamble, no "DICM"
    assert with_meta[:2] == b"\x02\x00"
    bare = DicomBytesIO()
    bare.is_little_endian, bare.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(bare, ds)  # no file meta at all (implicit VR little endian)
    for data in (with_meta, bare.getvalue()):
        out = decode_image(data, filename="no-preamble")
        np.testing.assert_allclose(out.pixels, expected(), atol=1.5 / 4095)
        assert "PatientName" in out.deid_removed


@pytest.mark.parametrize(("modality", "view", "rules", "refused"), [
    ("CT", "", AcceptRules(), "modality CT: this study accepts CR, DX only"),
    ("MR", "", AcceptRules(), "modality MR"),
    ("US", "", AcceptRules(), "modality US"),
    ("SC", "", AcceptRules(), "modality SC"),
    ("DX", "LL", AcceptRules(), "view LL: this study accepts AP, PA views only"),
    ("CR", "", AcceptRules(), "no view position recorded"),
    ("CT", "", AcceptRules(modalities=("any",), views=()), None),
    ("DX", "LL", AcceptRules(views=()), None),
    ("DX", "AP", AcceptRules(), None),
])
def test_modality_and_view_rules_refuse_per_file(modality, view, rules, refused):
    ds = base()
    ds.Modality, ds.ViewPosition = modality, view
    del ds.StudyDescription  # "CHEST PA for …": the view would be read from it
    if refused:
        with pytest.raises(ImageRejected, match=re.escape(refused)):
            decode_image(dicom_bytes(ds), filename="x.dcm", rules=rules)
    else:
        assert decode_image(dicom_bytes(ds), filename="x.dcm", rules=rules).metadata["modality"] == modality


def test_the_view_is_read_from_the_series_description_when_view_position_is_empty():
    ds = base()
    ds.ViewPosition, ds.StudyDescription, ds.SeriesDescription = "", "", "THORAX AP SUPINE"
    assert decode_image(dicom_bytes(ds), filename="x.dcm", rules=AcceptRules()).metadata["view_position"] == "AP"


def test_multiframe_stays_refused_with_the_reason():
    with pytest.raises(ImageRejected, match="multi-frame DICOM .3 frames"):
        decode_image(dicom_bytes(make_dicom(frames=3)), filename="cine.dcm", rules=AcceptRules(modalities=("any",)))


# --- through the import: duplicates across encodings, keyed identities, nothing identifying stored -------------
def _import(study, path: Path, *extra: str) -> dict:
    import json

    from django.core.management import call_command

    out = io.StringIO()
    call_command("import_images", study.name, str(path), "--json", *extra, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_duplicates_are_found_across_encodings_and_by_original_uid(make_study, tmp_path):
    from annotation.models import Image

    study = make_study()
    folder = tmp_path / "pacs"
    folder.mkdir()
    plain = base()
    (folder / "a-plain.dcm").write_bytes(dicom_bytes(plain))
    twin = base()
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    twin.compress(JPEG2000Lossless)  # the same radiograph, another encoding and another UID
    (folder / "b-j2k.dcm").write_bytes(dicom_bytes(twin))
    same_uid = base()
    same_uid.PixelData = (RAMP[::-1].copy()).tobytes()  # other pixels, the first file's SOP Instance UID
    same_uid.SOPInstanceUID = same_uid.file_meta.MediaStorageSOPInstanceUID = plain.SOPInstanceUID
    (folder / "c-same-uid.dcm").write_bytes(dicom_bytes(same_uid))
    other = base()
    other.PixelData, other.PatientID = (RAMP // 2).tobytes(), "OTHER-PATIENT-7"
    (folder / "d-other.dcm").write_bytes(dicom_bytes(other))
    result = _import(study, folder)
    assert result["imported"] == 2 and result["rejected"] == []
    assert {(d["file"], d["duplicate_of"], d["matched_by"]) for d in result["duplicate_files"]} == {
        ("b-j2k.dcm", "a-plain.dcm", "decoded pixels"), ("c-same-uid.dcm", "a-plain.dcm", "SOP Instance UID")}
    images = {i.original_name: i for i in Image.objects.filter(study=study)}
    first, second = images["a-plain.dcm"], images["d-other.dcm"]
    assert len(first.sop_uid_hash) == 64 and first.pixel_sha256 and first.sop_uid_hash != second.sop_uid_hash
    assert first.patient_pseudonym and second.patient_pseudonym and first.patient_pseudonym != second.patient_pseudonym
    again = _import(study, folder)  # a rerun imports nothing new
    assert again["imported"] == 0 and again["duplicates"] == 4


@pytest.mark.django_db
def test_no_identifier_survives_in_rows_files_names_or_reports(make_study, tmp_path, settings):
    from django.core.management import call_command

    study = make_study()
    ds = base()
    uids = {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
    ds.compress(JPEGLSLossless)
    folder = tmp_path / "export"
    folder.mkdir()
    name = f"{ds.SOPInstanceUID}.dcm"  # PACS exports name files by UID
    (folder / name).write_bytes(dicom_bytes(ds))
    reports = tmp_path / "reports.csv"
    reports.write_text("accession_number,report\nACC5550123,Johnathan Doe (MRN99887766) seen 2024-02-19: "
                       "FINDINGS: small left effusion. Dr Kildare.\n")
    result = _import(study, folder, "--reports", str(reports))
    assert result["imported"] == 1, result
    dump = io.StringIO()
    call_command("dumpdata", "annotation", stdout=dump)
    stored = dump.getvalue() + "".join(
        p.read_bytes().decode("latin-1") for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())
    for value in (*uids, "Doe^Johnathan", "Johnathan", "MRN99887766", "19510317", "ACC5550123", "20240219",
                  "Kildare", "Private^Pamela", "Saint Elsewhere"):
        assert value not in stored, value
    from annotation.models import Image

    image = Image.objects.get(study=study)
    assert "small left effusion" in image.prompt and "[removed]" in image.prompt  # matched by accession, scrubbed
    assert image.original_name == "[removed].dcm"


@pytest.mark.django_db
def test_no_identifier_reaches_an_export(make_study, add_reader, tmp_path, settings):
    """An imported radiograph read in a round and exported (labels as JSONL, images as an imagefolder ZIP): none of
    its header's identifiers, nor its original UIDs, is in either file."""
    import uuid
    import zipfile

    from django.core.management import call_command

    from annotation.images.storage import image_store
    from annotation.models import Image
    from annotation.reading import assignment
    from annotation.rounds.services import round_create, round_open_labeling
    from tests.conftest import random_pixels

    study = make_study("phi-export", readers_per_image=1, task_kinds=["realism"])
    ds = base()
    uids = {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(dicom_bytes(ds))
    reports = tmp_path / "reports.csv"
    reports.write_text(f"study_uid,report\n{ds.StudyInstanceUID},FINDINGS: clear lungs. Doe^Johnathan MRN99887766.\n")
    assert _import(study, folder, "--reports", str(reports))["imported"] == 1
    rnd = round_create(study=study)
    Image.objects.filter(study=study).update(round=rnd)
    image_store(study=study, round=rnd, source="synthetic", pixels=random_pixels(5, (64, 64)), prompt="p",
                generator="test")
    round_open_labeling(round=rnd)
    reader = add_reader(study, "phi-reader")
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
        assignment.label_submit(reader=reader, task_token=task.token, answer={"call": "real", "confidence": 3},
                                submission_id=uuid.uuid4())
    texts = []
    for fmt, name in (("jsonl", "labels.jsonl"), ("imagefolder", "images.zip")):
        out = tmp_path / "out" / name
        call_command("export_dataset", "--study", study.name, "--format", fmt, "--out", str(out), stdout=io.StringIO())
        texts.append(out.read_bytes().decode("latin-1"))
        if fmt == "imagefolder":
            with zipfile.ZipFile(out) as zf:
                texts += [zf.read(n).decode("latin-1") for n in zf.namelist()]
        texts.append((out.parent / f"{name}.manifest.json").read_text())
    exported = "\n".join(texts)
    assert "clear lungs" in exported  # the report made it, scrubbed
    for value in (*uids, "Doe^Johnathan", "Johnathan", "MRN99887766", "19510317", "ACC5550123", "Kildare"):
        assert value not in exported, value
