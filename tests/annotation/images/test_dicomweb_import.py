"""PACS import over DICOMweb against a real Orthanc: three studies stored over STOW-RS, imported with QIDO-RS and
WADO-RS through the same de-identifying path as uploads, reports matched by accession number; a second run imports
nothing new; an import stopped midway finishes on a rerun; a server that does not answer gets a sentence."""

import io
import json

import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from annotation.images.dicomweb import DicomwebUnreachable, dicomweb_import, filters_parse
from annotation.models import Image
from tests.annotation.images.test_uploads import make_dicom

pytestmark = pytest.mark.django_db


def _study_datasets(n: int, series_seed: int, *, modality: str = "CR", accession: str = "") -> list[pydicom.Dataset]:
    study_uid = generate_uid()
    out = []
    for i in range(n):
        pixels = (np.random.default_rng(series_seed * 10 + i).integers(0, 4096, (40, 32))).astype(np.uint16)
        ds = make_dicom(pixels, photometric="MONOCHROME2")
        ds.StudyInstanceUID, ds.Modality, ds.ViewPosition = study_uid, modality, "PA"
        ds.AccessionNumber = accession or f"ACC{series_seed}"
        ds.PatientID = f"PT-{series_seed}"
        if i % 2:
            ds.compress(RLELossless if series_seed % 2 else JPEG2000Lossless)
        out.append(ds)
    return out


def _stow(url: str, datasets: list[pydicom.Dataset]) -> None:
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url=url).store_instances(datasets)


@pytest.fixture
def pacs(orthanc):
    """The session's Orthanc holding three CR studies (2 + 2 + 1 instances) and one CT study of this test only."""
    tag = generate_uid()[-8:]
    studies = [_study_datasets(2, 1, accession=f"A1-{tag}"), _study_datasets(2, 2, accession=f"A2-{tag}"),
               _study_datasets(1, 3, accession=f"A3-{tag}"), _study_datasets(1, 4, modality="CT", accession=f"A4-{tag}")]
    for datasets in studies:
        for ds in datasets:
            ds.StudyDescription = f"cxr-{tag}"
        _stow(orthanc, datasets)
    return orthanc, tag, studies


def _import(study, url, *extra) -> dict:
    out = io.StringIO()
    call_command("import_images", study.name, "--dicomweb", url, *extra, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_three_studies_import_over_dicomweb_and_a_rerun_imports_nothing_new(make_study, pacs, tmp_path, settings):
    url, tag, studies = pacs
    study = make_study("pacs")
    reports = tmp_path / "reports.csv"
    reports.write_text(f"accession_number,report\nA1-{tag},FINDINGS: no effusion. Patient Doe^Johnathan.\n")
    first = _import(study, url, "--filter", f"StudyDescription=cxr-{tag}", "--reports", str(reports))
    assert first["imported"] == 5 and first["duplicates"] == 0, json.dumps(first, indent=1)
    assert [r["reason"] for r in first["rejected"]] == ["modality CT: this study accepts CR, DX only (not retrieved)"]
    images = Image.objects.filter(study=study)
    assert images.count() == 5 and all(i.sop_uid_hash and i.patient_pseudonym for i in images)
    assert len({i.patient_pseudonym for i in images}) == 3
    with_report = [i for i in images if i.prompt]
    assert len(with_report) == 2 and all(i.prompt == "FINDINGS: no effusion. Patient [removed]." for i in with_report)
    dump = io.StringIO()
    call_command("dumpdata", "annotation", stdout=dump)
    for ds in (d for s in studies for d in s):
        for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.AccessionNumber, "MRN99887766", "Johnathan"):
            assert str(value) not in dump.getvalue()
    again = _import(study, url, "--filter", f"StudyDescription=cxr-{tag}")
    assert again["imported"] == 0 and again["duplicates"] == 5, again
    assert Image.objects.filter(study=study).count() == 5


def test_an_import_stopped_midway_finishes_on_a_rerun(make_study, pacs):
    url, tag, _ = pacs
    study = make_study("pacs-resume")
    filters = filters_parse([f"StudyDescription=cxr-{tag}", "Modality=CR"])

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt  # the worker or the shell killed midway

    with pytest.raises(KeyboardInterrupt):
        dicomweb_import(study=study, url=url, filters=filters, progress=stop_after_two)
    assert Image.objects.filter(study=study).count() == 2
    rerun = dicomweb_import(study=study, url=url, filters=filters)
    assert len(rerun.imported) == 3 and len(rerun.duplicates) == 2 and not rerun.rejected
    assert Image.objects.filter(study=study).count() == 5


def test_a_server_that_does_not_answer_gets_a_sentence(make_study):
    study = make_study("pacs-down")
    with pytest.raises(DicomwebUnreachable, match="does not answer"):
        dicomweb_import(study=study, url="http://127.0.0.1:9/dicom-web")
    with pytest.raises(CommandError, match=r"does not answer .*run the same command again"):
        call_command("import_images", study.name, "--dicomweb", "http://127.0.0.1:9/dicom-web", stdout=io.StringIO())
    with pytest.raises(CommandError, match="is not a DICOM keyword"):
        call_command("import_images", study.name, "--dicomweb", "http://127.0.0.1:9/x", "--filter", "Colour=red",
                     stdout=io.StringIO())
    with pytest.raises(CommandError, match="not an http"):
        call_command("import_images", study.name, "--dicomweb", "ftp://pacs/x", stdout=io.StringIO())
