"""DICOM de-identification: PS3.15 Annex E, the Basic Application Level Confidentiality Profile — identifying
elements emptied or removed, UIDs replaced consistently within a file, private tags and file-meta identities
dropped. Pure pydicom; no Django."""

from __future__ import annotations

import hashlib
import hmac
import re

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid


def _words(*groups: str) -> tuple[str, ...]:
    return tuple(word for group in groups for word in group.split())


# Z (and Z/D) attributes are kept but emptied, so Type 2 attributes stay present.
_EMPTY = _words(
    """PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime AccessionNumber
    ReferringPhysicianName StudyID ContentDate ContentTime ContentCreatorName VerifyingObserverName
    PatientSexNeutered"""
)
# X (and X/Z, X/D) attributes are removed.
_REMOVE = _words(
    # patient
    """PatientBirthTime PatientAge PatientSize PatientWeight PatientAddress OtherPatientIDs
    OtherPatientIDsSequence OtherPatientNames PatientBirthName PatientMotherBirthName IssuerOfPatientID
    MedicalRecordLocator MilitaryRank BranchOfService CountryOfResidence RegionOfResidence
    PatientTelephoneNumbers PatientTelecomInformation EthnicGroup Occupation SmokingStatus
    AdditionalPatientHistory PregnancyStatus LastMenstrualDate PatientReligiousPreference
    PatientComments PatientState MedicalAlerts Allergies SpecialNeeds PatientInsurancePlanCodeSequence
    PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
    PatientTransportArrangements PatientInstitutionResidence ResponsiblePerson ResponsiblePersonRole
    ResponsibleOrganization ReferencedPatientSequence ReferencedPatientAliasSequence
    ReferencedPatientPhotoSequence ConfidentialityConstraintOnPatientDataDescription PersonName
    PersonAddress PersonTelephoneNumbers PersonTelecomInformation PersonIdentificationCodeSequence""",
    # visit, order and request
    """AdmissionID IssuerOfAdmissionID AdmittingDate AdmittingTime AdmittingDiagnosesDescription
    AdmittingDiagnosesCodeSequence DischargeDiagnosisDescription CurrentPatientLocation AssignedLocation
    ServiceEpisodeID ServiceEpisodeDescription VisitComments ReasonForStudy
    ReasonForTheImagingServiceRequest RequestAttributesSequence RequestedProcedureDescription
    RequestedProcedureID RequestedProcedureComments RequestedProcedureLocation
    ImagingServiceRequestComments RequestingPhysician RequestingPhysicianIdentificationSequence
    RequestingService OrderEnteredBy OrderEntererLocation OrderCallbackPhoneNumber
    OrderCallbackTelecomInformation PlacerOrderNumberImagingServiceRequest
    FillerOrderNumberImagingServiceRequest ScheduledProcedureStepDescription
    ScheduledPerformingPhysicianName ScheduledPerformingPhysicianIdentificationSequence
    ScheduledProcedureStepLocation ScheduledStationName ScheduledStationAETitle
    ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence PerformedProcedureStepID
    PerformedProcedureStepDescription PerformedProcedureStepStartDate PerformedProcedureStepStartTime
    PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedStationName
    PerformedStationAETitle PerformedLocation ActualHumanPerformersSequence HumanPerformerName
    HumanPerformerOrganization ReferencedStudySequence ReferencedPerformedProcedureStepSequence""",
    # people
    """ReferringPhysicianAddress ReferringPhysicianTelephoneNumbers
    ReferringPhysicianIdentificationSequence PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
    PerformingPhysicianName PerformingPhysicianIdentificationSequence NameOfPhysiciansReadingStudy
    PhysiciansReadingStudyIdentificationSequence ConsultingPhysicianName
    ConsultingPhysicianIdentificationSequence OperatorsName OperatorIdentificationSequence
    ContentCreatorIdentificationCodeSequence VerifyingObserverIdentificationCodeSequence
    VerifyingOrganization ReviewerName EvaluatorName DistributionName DistributionAddress""",
    # institution and device
    """InstitutionName InstitutionAddress InstitutionalDepartmentName
    InstitutionalDepartmentTypeCodeSequence InstitutionCodeSequence StationName DeviceSerialNumber
    DeviceDescription DetectorID GantryID PlateID CassetteID GeneratorID SourceSerialNumber UDISequence
    UniqueDeviceIdentifier SoftwareVersions DestinationAE""",
    # dates and times, descriptions, free text
    """SeriesDate SeriesTime AcquisitionDate AcquisitionTime AcquisitionDateTime InstanceCreationDate
    InstanceCreationTime TimezoneOffsetFromUTC StudyDescription SeriesDescription ProtocolName
    StudyComments ImageComments FrameComments AcquisitionComments DerivationDescription
    AcquisitionDeviceProcessingDescription ContributionDescription ContrastBolusAgent
    InterventionDrugName TextString TextComments TopicTitle TopicSubject TopicAuthor TopicKeywords
    AcquisitionContextSequence IconImageSequence ReferencedImageSequence SourceImageSequence""",
    # provenance that may hold the original values
    """OriginalAttributesSequence ModifiedAttributesSequence DigitalSignaturesSequence
    ReferencedDigitalSignatureSequence ReferencedSOPInstanceMACSequence MACParametersSequence
    DataSetTrailingPadding""",
)
# U attributes are replaced by fresh random UIDs, consistently within one dataset (so references
# inside it still match) rather than dropped: SOPInstanceUID is Type 1 and mirrored in the file meta.
_REPLACE_UID = _words(
    """StudyInstanceUID SeriesInstanceUID SOPInstanceUID FrameOfReferenceUID
    SynchronizationFrameOfReferenceUID ReferencedSOPInstanceUID ReferencedFrameOfReferenceUID
    RelatedFrameOfReferenceUID InstanceCreatorUID IrradiationEventUID DimensionOrganizationUID
    ConcatenationUID DeviceUID DigitalSignatureUID DoseReferenceUID FailedSOPInstanceUIDList FiducialUID
    MultiFrameSourceSOPInstanceUID ObservationUID PaletteColorLookupTableUID
    LargePaletteColorLookupTableUID ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
    RequestedSOPInstanceUID SpecimenUID StorageMediaFileSetUID TargetUID TemplateExtensionCreatorUID
    TemplateExtensionOrganizationUID TrackingUID TransactionUID UID CreatorVersionUID"""
)
BASIC_PROFILE_TAGS: tuple[str, ...] = _EMPTY + _REMOVE + _REPLACE_UID


def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    tags = {kw: tag_for_keyword(kw) for kw in keywords}
    unknown = [kw for kw, tag in tags.items() if tag is None]
    if unknown:  # a typo here would silently let PHI through
        raise RuntimeError(f"unknown DICOM keywords in the de-identification profile: {unknown}")
    return frozenset(t for t in tags.values() if t is not None)


_EMPTY_TAGS, _REMOVE_TAGS, _UID_TAGS = _tags(_EMPTY), _tags(_REMOVE), _tags(_REPLACE_UID)
_FILE_META_REMOVE = (
    "SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
    "PrivateInformationCreatorUID", "PrivateInformation",
)  # fmt: skip


def _tag_name(elem: pydicom.DataElement) -> str:
    if elem.keyword and not elem.tag.is_private:
        return elem.keyword
    return f"({elem.tag.group:04X},{elem.tag.element:04X})"


def _must_remove(elem: pydicom.DataElement) -> bool:
    tag = elem.tag
    if tag.is_private or not elem.keyword or tag in _REMOVE_TAGS:  # unknown even-group tags too
        return True
    if 0x5000 <= tag.group <= 0x50FF:  # retired curve data
        return True
    if 0x6000 <= tag.group <= 0x60FF and tag.element in (0x3000, 0x4000):  # overlay data, comments
        return True
    # Beyond Annex E: no person name survives anywhere, whatever attribute carries it.
    return elem.VR == "PN" and tag not in _EMPTY_TAGS


def _scrub(ds: pydicom.Dataset, touched: dict[str, None], uid_map: dict[str, str]) -> None:
    for tag in list(ds.keys()):
        elem = ds[tag]
        if _must_remove(elem):
            del ds[tag]
        elif tag in _EMPTY_TAGS:
            if elem.value in (None, "", b""):
                continue
            elem.value = [] if elem.VR == "SQ" else None
        elif tag in _UID_TAGS:
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [uid_map.setdefault(str(v), generate_uid()) for v in values if v]
            elem.value = new if elem.VM > 1 else (new[0] if new else "")
        else:
            if elem.VR == "SQ":
                for item in elem.value:
                    _scrub(item, touched, uid_map)
            continue
        touched[_tag_name(elem)] = None


def deidentify_dataset(ds: pydicom.Dataset) -> list[str]:
    """De-identify `ds` in place (Annex E basic profile, private/unknown tags, any person name).

    Returns the keywords (or "(gggg,eeee)") of the attributes removed, emptied or given new UIDs.
    """
    touched: dict[str, None] = {}  # an ordered set
    uid_map: dict[str, str] = {}
    _scrub(ds, touched, uid_map)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in _FILE_META_REMOVE:
            if keyword in meta:
                del meta[keyword]
                touched[keyword] = None
        old = str(meta.get("MediaStorageSOPInstanceUID", ""))
        if old:
            meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or uid_map.get(old, generate_uid())
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 E.1 Basic Profile; private and name tags removed"  # LO: <= 64
    return list(touched)


def keyed_hash(key: str, kind: str, value: str) -> str:
    """HMAC-SHA256 of `value` under `key` (hex): matches a value seen again without keeping it (a reversible
    plain hash of a UID or patient ID could be looked up by anyone holding the original)."""
    return hmac.new(key.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


REMOVED = "[removed]"


def scrub_text(text: str, identifiers: tuple[str, ...] | list[str]) -> str:
    """`text` with every identifier (a name, ID, UID or date from the image's header) replaced by "[removed]",
    case-insensitively; a name is matched as a whole word, so "Ann" does not eat "annular"."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        if not ident.strip():
            continue
        pattern = re.escape(ident.strip())
        if ident[:1].isalnum():
            pattern = r"(?<![\w.])" + pattern
        if ident[-1:].isalnum():
            pattern += r"(?![\w])"
        text = re.sub(pattern, REMOVED, text, flags=re.IGNORECASE)
    return text
