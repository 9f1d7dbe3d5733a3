"""Importing real images through the management command and the admin upload: good files stored once, bad files
rejected with a reason while the rest imports, bad archives rejected whole, nothing half-written either way."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image as PILImage

from annotation.models import AuditEvent, Image
from tests.annotation.images.test_uploads import PHI, dicom_bytes, make_dicom

pytestmark = pytest.mark.django_db


def png(seed: int, size=(80, 64)) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def stored_files(media: Path) -> list[Path]:
    return sorted(p for p in media.rglob("*") if p.is_file())


@pytest.fixture
def media(settings):
    return Path(settings.MEDIA_ROOT)


def test_folder_import_with_reports_dicom_and_bad_files(make_study, tmp_path, media):
    study = make_study()
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png(1))
    (folder / "b.jpg").write_bytes(jpeg(2))
    (folder / "sub" / "c.dcm").write_bytes(dicom_bytes(make_dicom()))
    (folder / "copy-of-a.png").write_bytes(png(1))
    (folder / "evil.png").write_bytes(b"<html><script>alert(1)</script></html>")
    (folder / "cut.png").write_bytes(png(3)[:200])
    reports = tmp_path / "reports.csv"
    reports.write_text("file_name,report\na.png,PA chest radiograph. No acute abnormality.\nc.dcm,Cardiomegaly.\n")
    out = io.StringIO()
    call_command("import_images", study.name, str(folder), "--reports", str(reports), "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["imported"] == 3 and result["duplicates"] == 1
    assert {r["file"] for r in result["rejected"]} == {"evil.png", "cut.png"}
    assert all(r["reason"] for r in result["rejected"])
    images = {i.original_name: i for i in Image.objects.filter(study=study)}
    assert set(images) == {"a.png", "b.jpg", "sub/c.dcm"}
    assert images["a.png"].prompt.startswith("PA chest radiograph")
    assert images["sub/c.dcm"].prompt == "Cardiomegaly."
    assert "PatientName" in images["sub/c.dcm"].deid_removed
    assert len(stored_files(media)) == 6  # full + display per image, nothing for rejected files
    assert AuditEvent.objects.filter(action="images.import", study=study).count() == 1


def test_no_phi_survives_a_dicom_import(make_study, tmp_path, media):
    study = make_study()
    path = tmp_path / "scan.dcm"
    path.write_bytes(dicom_bytes(make_dicom()))
    call_command("import_images", study.name, str(path), stdout=io.StringIO())
    image = Image.objects.get(study=study)
    stored = b"".join(p.read_bytes() for p in stored_files(media))
    row = json.dumps([image.meta, image.deid_removed, image.prompt, image.original_name]).encode()
    for value in PHI.values():
        needle = str(value).encode()
        assert needle not in stored and needle not in row


def test_bad_archive_is_rejected_whole(make_study, tmp_path, media):
    study = make_study()
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.png", png(5))
        zf.writestr("../escape.png", png(6))
    with pytest.raises(CommandError, match="Archive rejected, nothing imported"):
        call_command("import_images", study.name, str(archive), stdout=io.StringIO())
    assert not Image.objects.exists() and stored_files(media) == []


def test_good_archive_imports_and_skips_junk(make_study, tmp_path):
    study = make_study()
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cases/one.png", png(7))
        zf.writestr("cases/two.dcm", dicom_bytes(make_dicom()))
        zf.writestr("__MACOSX/._one.png", b"junk")
        zf.writestr("cases/three.png", png(8, size=(300, 200)))
    out = io.StringIO()
    call_command("import_images", study.name, str(archive), "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["imported"] == 3 and result["rejected"] == []


def test_size_limit_is_a_setting(make_study, tmp_path, settings):
    settings.CXR_MAX_PIXELS = 1000
    study = make_study()
    (tmp_path / "big.png").write_bytes(png(9, size=(100, 100)))
    (tmp_path / "small.png").write_bytes(png(10, size=(20, 20)))
    out = io.StringIO()
    call_command("import_images", study.name, str(tmp_path), "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["imported"] == 1 and "pixel" in result["rejected"][0]["reason"]


def test_command_errors_are_sentences(make_study, tmp_path):
    study = make_study()
    with pytest.raises(CommandError, match="No study named 'nope'"):
        call_command("import_images", "nope", str(tmp_path))
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_images", study.name, str(tmp_path / "missing"))
    (tmp_path / "r.csv").write_text("name,text\n")
    (tmp_path / "a.png").write_bytes(png(1))
    with pytest.raises(CommandError, match="a report column and a file_name"):
        call_command("import_images", study.name, str(tmp_path / "a.png"), "--reports", str(tmp_path / "r.csv"))


def test_admin_upload_reports_per_file_errors_and_refuses_bad_zip(make_study, admin_client, media):
    study = make_study()
    url = f"/admin/annotation/study/{study.pk}/import/"
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("x.png", png(11))
        zf.writestr("y.png", b"GIF89a not really")
    good.name = "batch.zip"
    good.seek(0)
    response = admin_client.post(url, {"archive": good})
    assert response.status_code == 200
    assert b"1 imported" in response.content and b"not a PNG, JPEG or DICOM file" in response.content
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("/etc/passwd.png", png(12))
    evil.name = "evil.zip"
    evil.seek(0)
    response = admin_client.post(url, {"archive": evil})
    assert response.status_code == 400 and b"absolute path" in response.content
    assert Image.objects.filter(study=study).count() == 1
    assert len(stored_files(media)) == 2


def test_cleaning_treats_real_and_synthetic_images_alike(make_study, stored_round):
    from annotation.images.storage import image_store
    from annotation.rounds.services import round_create
    from annotation.rounds.stages import round_clean_images
    from inference.ml.phantoms import generate_phantom

    study = make_study(display_size=128)
    rnd = round_create(study=study)
    for i, source in enumerate(["real", "synthetic", "real", "synthetic"]):
        phantom = generate_phantom(seed=40 + i, size=256, burn_in_text=True)
        image_store(study=study, round=rnd, source=source, pixels=phantom.image, prompt=phantom.report)
    assert round_clean_images(round=rnd) == 4
    assert round_clean_images(round=rnd) == 0  # twice: nothing new
    in_round = list(Image.objects.filter(round=rnd))
    assert len(in_round) == 4 and all(i.cleaned_from_id and i.mask_key for i in in_round)
    assert sorted(i.source for i in in_round) == ["real", "real", "synthetic", "synthetic"]
    assert all(i.meta["mask_fraction"] > 0 for i in in_round)  # the burned-in text was found in every image
    assert Image.objects.filter(round__isnull=True, study=study).count() == 4  # raw images kept, out of the round
