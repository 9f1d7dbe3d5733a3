"""The annotation app's tables, one module per part: `studies` (studies, memberships, audit), `reading` (rounds,
images, the blinded reading queue, labels), `clients` (API tokens, export jobs, webhooks), `imports` (import jobs).
Import them from here."""

from annotation.models.clients import (
    ApiToken,
    ExportJob,
    TokenScope,
    Webhook,
    WebhookDelivery,
    new_submission_id,
)
from annotation.models.imports import ImportJob
from annotation.models.panels import EvaluationPanel, PanelKind, PanelScore
from annotation.models.reading import (
    Image,
    Label,
    ReaderQueue,
    ReadingCase,
    ReadingTask,
    Round,
    RoundStatus,
    TaskStatus,
)
from annotation.models.studies import (
    AuditEvent,
    Role,
    Source,
    Study,
    StudyMembership,
    TaskKind,
    default_catch_rule,
    default_kinds,
    default_rubric,
    new_seed,
    new_token,
)

__all__ = [
    "ImportJob",
    "new_token",
    "new_seed",
    "default_rubric",
    "default_catch_rule",
    "default_kinds",
    "Source",
    "TaskKind",
    "Study",
    "Role",
    "StudyMembership",
    "AuditEvent",
    "RoundStatus",
    "Round",
    "Image",
    "ReadingCase",
    "ReaderQueue",
    "TaskStatus",
    "ReadingTask",
    "Label",
    "TokenScope",
    "ApiToken",
    "new_submission_id",
    "ExportJob",
    "Webhook",
    "WebhookDelivery",
    "EvaluationPanel",
    "PanelKind",
    "PanelScore",
]
