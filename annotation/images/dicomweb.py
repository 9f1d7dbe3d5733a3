"""Import from a PACS over DICOMweb: instances found with QIDO-RS, pulled with WADO-RS (dicomweb-client), then
decoded, checked, de-identified and stored exactly as uploaded files are (`importing.image_import_one`).

Resumable: an instance whose keyed SOP Instance UID hash the study already holds is skipped without being
retrieved, so a rerun after a stop imports only what is missing. Instances of a modality the study does not
accept are refused from the QIDO answer, before anything is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

import pydicom
import requests
from django.conf import settings
from django.core.exceptions import ValidationError

from annotation.images.deidentify import keyed_hash
from annotation.images.importing import ImportResult, image_import_one, limits_from_settings, study_rules
from annotation.models import Image, Round, Source, Study
from annotation.studies.audit import audit

PAGE = 500  # QIDO-RS results asked for per request
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
         "Modality": "00080060"}


class DicomwebUnreachable(Exception):
    """The server did not answer, or answered with an error: `reason` is a sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def filters_parse(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """["Modality=CR", "StudyDate=20240101-20241231"] → QIDO-RS search filters; a sentence for a malformed one."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValidationError(f"filter {item!r}: give KEY=VALUE, a DICOM keyword or tag and its value "
                                  "(e.g. Modality=CR, StudyDate=20240101-20241231, AccessionNumber=A123).")
        key = key.strip()
        if not (pydicom.datadict.tag_for_keyword(key) or _is_tag(key)):
            raise ValidationError(f"filter {item!r}: {key!r} is not a DICOM keyword or an 8-digit hex tag.")
        out[key] = value.strip()
    return out


def _is_tag(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key)


def _value(attrs: dict, keyword: str) -> str:
    values = (attrs.get(_TAGS[keyword]) or {}).get("Value") or [""]
    return str(values[0]).strip()


def url_check(url: str) -> str:
    """The URL of a DICOMweb service, or a sentence saying why it is not one."""
    parsed = urlparse((url or "").strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValidationError(f"{url!r} is not an http(s) URL of a DICOMweb service (e.g. http://pacs:8042/dicom-web).")
    return url.strip()


def _client(url: str, session: requests.Session | None):
    from dicomweb_client.api import DICOMwebClient

    url = url_check(url)
    client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=(10, 120))
    client.set_http_retry_params(retry=False)  # a server that does not answer is said at once, not after a minute
    return client


def _unreachable(url: str, exc: Exception) -> DicomwebUnreachable:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return DicomwebUnreachable(f"The DICOMweb server at {url} answered HTTP {exc.response.status_code} "
                                   f"({exc.response.reason}): check the URL (its QIDO-RS/WADO-RS root) and access.")
    return DicomwebUnreachable(f"The DICOMweb server at {url} does not answer ({type(exc).__name__}): is it running, "
                               "and is the URL right?")


def instances_find(url: str, filters: dict[str, str], *, session: requests.Session | None = None) -> list[dict]:
    """Every instance matching `filters` (QIDO-RS, paged): study, series and SOP Instance UIDs and modality."""
    client = _client(url, session)
    found: list[dict] = []
    try:
        while True:
            page = client.search_for_instances(search_filters=filters or None, limit=PAGE, offset=len(found),
                                               fields=["Modality"])
            found += [{k: _value(a, k) for k in _TAGS} for a in page]
            if len(page) < PAGE:
                return [f for f in found if f["SOPInstanceUID"]]
    except (requests.RequestException, OSError) as exc:
        raise _unreachable(url, exc) from exc


def instance_retrieve(url: str, inst: dict, *, session: requests.Session | None = None) -> bytes:
    """One instance's bytes in the encoding the server stores (WADO-RS, multipart/related; type="application/dicom";
    transfer-syntax=*: no transcoding on the server, our decoders read every common encoding).

    Read here rather than through dicomweb-client's parser, which refuses a part without the 128-byte preamble;
    `decode_image` reads those, as it reads such files from disk."""
    target = (f"{url.rstrip('/')}/studies/{inst['StudyInstanceUID']}/series/{inst['SeriesInstanceUID']}"
              f"/instances/{inst['SOPInstanceUID']}")
    response = (session or requests).get(target, timeout=(10, 120),
                                         headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    response.raise_for_status()
    parts = multipart_parts(response.headers.get("Content-Type", ""), response.content)
    if len(parts) != 1:
        raise ValueError(f"expected one DICOM part, got {len(parts)}")
    return parts[0]


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related message (RFC 2046): split on the boundary, each part's headers dropped."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"')
    if not content_type.lower().startswith("multipart/related") or not boundary:
        raise ValueError(f"not a multipart/related answer (Content-Type {content_type!r})")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without headers")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)  # the CRLF before the next delimiter
    return parts


def dicomweb_import(*, study: Study, url: str, filters: dict[str, str] | None = None,
                    reports: dict[str, str] | None = None, round: Round | None = None, actor=None,
                    progress: Callable[[int, int], None] | None = None,
                    session: requests.Session | None = None) -> ImportResult:
    """Import every instance matching `filters` from the DICOMweb service at `url` into `study`.

    `progress(done, total)` after each instance. Raises DicomwebUnreachable when the server does not answer
    (instances stored before that stay stored: a rerun goes on from there)."""
    instances = instances_find(url, filters or {}, session=session)
    key, limits, rules = settings.CXR_PSEUDONYM_KEY, limits_from_settings(), study_rules(study)
    host = urlparse(url).netloc
    result = ImportResult()
    held = set(Image.objects.filter(study=study).exclude(sop_uid_hash="").values_list("sop_uid_hash", flat=True))
    for done, inst in enumerate(instances, start=1):
        uid_hash = keyed_hash(key, "sop", inst["SOPInstanceUID"])
        name = f"{host} instance {uid_hash[:12]}"  # never the UID itself
        if uid_hash in held:
            result.duplicates.append((name, "an instance imported earlier", "SOP Instance UID"))
        elif inst["Modality"] and (refusal := rules.modality_refusal(inst["Modality"])) is not None:
            result.rejected.append((name, f"{refusal} (not retrieved)"))
        else:
            try:
                payload = instance_retrieve(url, inst, session=session)
            except (requests.RequestException, OSError) as exc:
                raise _unreachable(url, exc) from exc
            except ValueError as exc:  # a malformed multipart answer: this instance only
                result.rejected.append((name, f"the server's answer for this instance is not a DICOM part: {exc}"))
            else:
                before = len(result.imported)
                image_import_one(study=study, name=name, payload=payload, reports=reports or {},
                                 result=result, round=round, source=Source.REAL, limits=limits,
                                 extra_meta={"source": f"dicomweb {host}"})
                if len(result.imported) > before:
                    held.add(uid_hash)
        if progress:
            progress(done, len(instances))
    audit(actor=actor, action="images.import", study=study, source=f"dicomweb {host}", **result.as_dict())
    return result
