"""Images from the dashboard: an uploaded ZIP (with a reports CSV) or a DICOMweb pull becomes a job whose page shows
a progress bar and the per-file result (imported, duplicate of, refused and why); bad input is refused before
anything is queued; only the study's admins see it."""

import io
import zipfile

import pytest
from django.core.files.storage import default_storage

from annotation.models import Image, ImportJob
from tests.annotation.images.test_import import png
from tests.annotation.images.test_uploads import dicom_bytes, make_dicom

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(make_study, add_admin, client):
    study = make_study("dash-import")
    admin = add_admin(study, "dash-admin")
    client.force_login(admin)
    return client, study


def _zip(entries) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    buf.seek(0)
    buf.name = "batch.zip"
    return buf


def test_an_uploaded_zip_imports_as_a_job_with_a_per_file_table(admin_client, django_capture_on_commit_callbacks):
    client, study = admin_client
    ct = make_dicom()
    ct.Modality = "CT"
    archive = _zip([("a.png", png(1)), ("again/a.png", png(1)), ("chest.dcm", dicom_bytes(make_dicom())),
                    ("ct.dcm", dicom_bytes(ct)), ("notes.png", b"not an image")])
    reports = io.BytesIO(b"file_name,report\na.png,FINDINGS: clear lungs.\n")
    reports.name = "reports.csv"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/dashboard/studies/{study.pk}/import/", {"upload": archive, "reports": reports})
    assert response.status_code == 302
    job = ImportJob.objects.get(study=study)
    assert response["Location"] == f"/dashboard/imports/{job.pk}/"
    job.refresh_from_db()
    assert job.status == "done" and job.progress == {"done": 5, "total": 5}
    assert job.result["imported"] == 2 and job.result["duplicates"] == 1 and len(job.result["rejected"]) == 2
    assert not default_storage.exists(job.upload_key)  # the upload is not kept once its images are stored
    assert Image.objects.get(study=study, original_name="a.png").prompt == "FINDINGS: clear lungs."
    page = client.get(f"/dashboard/imports/{job.pk}/").content.decode()
    assert "2 imported, 1 duplicate, 2 refused" in page and 'http-equiv="refresh"' not in page
    assert "duplicate of a.png (same file bytes)" in page
    assert "modality CT: this study accepts CR, DX only" in page and "not a PNG, JPEG or DICOM file" in page
    study_page = client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    assert f"/dashboard/imports/{job.pk}/" in study_page and "2 real images wait" in study_page


def test_bad_input_is_refused_before_anything_is_queued(admin_client):
    client, study = admin_client
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as zf:
        zf.writestr("../escape.png", png(2))
    bomb.seek(0)
    bomb.name = "evil.zip"
    for data, sentence in (({"upload": bomb}, "climbs out of the archive"),
                           ({"url": "ftp://pacs/x"}, "is not an http(s) URL"),
                           ({"url": "http://pacs:8042/dicom-web", "filters": "Colour=red"}, "is not a DICOM keyword"),
                           ({}, "Give a file")):
        response = client.post(f"/dashboard/studies/{study.pk}/import/", data)
        assert response.status_code == 400 and sentence in response.content.decode(), sentence
    assert not ImportJob.objects.exists() and not Image.objects.exists()


def test_only_the_study_admins_see_its_imports(admin_client, make_user, client, django_capture_on_commit_callbacks):
    admin, study = admin_client
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(f"/dashboard/studies/{study.pk}/import/", {"url": "http://127.0.0.1:9/dicom-web"})
    job = ImportJob.objects.get(study=study)
    job.refresh_from_db()
    assert job.status == "failed" and "does not answer" in job.error_message  # a PACS that is down: a sentence
    assert "run the import again" in admin.get(f"/dashboard/imports/{job.pk}/").content.decode().lower()
    stranger = make_user("stranger")
    client.force_login(stranger)
    assert client.get(f"/dashboard/imports/{job.pk}/").status_code == 404
    assert client.post(f"/dashboard/studies/{study.pk}/import/", {"url": "http://x/y"}).status_code == 404


def test_a_dicomweb_pull_from_the_dashboard(admin_client, orthanc, django_capture_on_commit_callbacks):
    from tests.annotation.images.test_dicomweb_import import _stow, _study_datasets

    client, study = admin_client
    datasets = _study_datasets(3, 8, accession="DASH-1")
    _stow(orthanc, datasets)
    for expected in (3, 0):  # the second pull imports nothing new
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/dashboard/studies/{study.pk}/import/",
                                   {"url": orthanc, "filters": "AccessionNumber=DASH-1\nModality=CR"})
        job = ImportJob.objects.get(pk=int(response["Location"].rstrip("/").rsplit("/", 1)[1]))
        assert job.status == "done" and job.result["imported"] == expected and job.progress["total"] == 3
    assert job.result["duplicates"] == 3
