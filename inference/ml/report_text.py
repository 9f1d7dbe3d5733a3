"""Report text as prompts: the findings/impression sections of a report a prompt is made from, and the built-in
template reports a study without reports samples from. Imports no torch (the web side reads it); encoding prompts
for the text encoder is `inference.ml.prompts`. No Django here."""

from __future__ import annotations

import re

#: What a study without its own reports samples from (and the tiny tokenizer is trained on, with the phantoms').
TEMPLATE_REPORTS = (
    "PA chest radiograph. No acute cardiopulmonary abnormality.",
    "AP portable chest radiograph. Cardiomegaly. Small left pleural effusion.",
    "PA chest radiograph. Right lower lobe consolidation. Heart size normal.",
    "Chest radiograph. Right apical pneumothorax. No mediastinal shift.",
    "PA and lateral chest. A small nodule in the left upper zone. Costophrenic angles are sharp.",
)

# A section header at a line's start (any case), or written in capitals inside a line ("... FINDINGS: ...").
_SECTION = re.compile(r"(?im:^\s*(findings|impression|conclusion|opinion)\s*:\s*)|"
                      r"(?<![A-Za-z])(FINDINGS|IMPRESSION|CONCLUSION|OPINION)\s*:\s*")
_OTHER_HEADER = re.compile(r"(?im)^\s*(indication|history|clinical history|comparison|technique|exam(?:ination)?|"
                           r"procedure|reason for (?:exam|study)|signed by|electronically signed.*)\s*:?")


def report_prompt(report: str) -> str:
    """The findings and impression sections of `report` when it has them (in that order), else the whole report;
    whitespace collapsed to single spaces."""
    text = (report or "").replace("\r\n", "\n")
    marks = [(m.start(), m.end(), (m.group(1) or m.group(2)).lower()) for m in _SECTION.finditer(text)]
    if marks:
        kept = []
        for _, end, name in marks:
            rest = text[end:]
            stop = len(rest)
            for other in (*_SECTION.finditer(rest), *_OTHER_HEADER.finditer(rest)):
                stop = min(stop, other.start())
            body = rest[:stop].strip()
            if body:
                kept.append(f"{name.upper()}: {body}")
        if kept:
            text = " ".join(kept)
    return " ".join(text.split())
