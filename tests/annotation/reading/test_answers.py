import pytest
from django.core.exceptions import ValidationError

from annotation.models import default_rubric
from annotation.reading.answers import validate_answer
from annotation.studies.rubric import validate_rubric_definition

RUBRIC = default_rubric()


@pytest.mark.parametrize(
    ("kind", "answer", "expected"),
    [
        ("realism", {"call": "real", "confidence": 3}, {"call": "real", "confidence": 3}),
        ("realism", {"call": "synthetic", "confidence": 5, "extra": 1}, {"call": "synthetic", "confidence": 5}),
        ("rubric", {"scores": {"anatomy": 1, "style": 5, "artifacts": 3}},
         {"scores": {"anatomy": 1, "style": 5, "artifacts": 3}, "comment": "", "boxes": []}),
        ("rubric", {"scores": {"anatomy": 2, "style": 2, "artifacts": 2}, "comment": "boxy heart",
                    "boxes": [{"x": 0.1, "y": 0.2, "w": 0.3, "h": 0.1}]},
         {"scores": {"anatomy": 2, "style": 2, "artifacts": 2}, "comment": "boxy heart",
          "boxes": [{"x": 0.1, "y": 0.2, "w": 0.3, "h": 0.1}]}),
        ("preference", {"choice": "left"}, {"choice": "left"}),
        ("preference", {"choice": "none"}, {"choice": "none"}),
        ("realism", {"cannot_assess": True, "reason": "unreadable"},
         {"cannot_assess": True, "reason": "unreadable", "comment": ""}),
        ("preference", {"cannot_assess": True}, {"cannot_assess": True, "reason": "other", "comment": ""}),
    ],
)
def test_valid_answers_are_normalised(kind, answer, expected):
    assert validate_answer(kind, answer, rubric=RUBRIC) == expected


@pytest.mark.parametrize(
    ("kind", "answer", "message"),
    [
        ("realism", {"call": "maybe", "confidence": 3}, "Choose Real or Synthetic"),
        ("realism", {"call": "real"}, "confidence must be"),
        ("realism", {"call": "real", "confidence": 6}, "confidence must be"),
        ("realism", {"call": "real", "confidence": True}, "confidence must be"),
        ("realism", {"call": "real", "confidence": "3"}, "confidence must be"),
        ("realism", ["real"], "must be an object"),
        ("rubric", {"scores": {"anatomy": 1, "style": 2}}, "Free of artifacts must be"),
        ("rubric", {"scores": {"anatomy": 1, "style": 2, "artifacts": 3, "color": 1}}, "Unknown rubric"),
        ("rubric", {"scores": {"anatomy": 0, "style": 2, "artifacts": 3}}, "Anatomy must be"),
        ("rubric", {"scores": {"anatomy": 1, "style": 2, "artifacts": 3}, "comment": "x" * 2001}, "comment"),
        ("rubric", {"scores": {"anatomy": 1, "style": 2, "artifacts": 3}, "boxes": [{"x": 0.9, "y": 0, "w": 0.5,
                                                                                     "h": 0.1}]}, "inside"),
        ("rubric", {"scores": {"anatomy": 1, "style": 2, "artifacts": 3}, "boxes": "x"}, "boxes must be"),
        ("preference", {"choice": "both"}, "choice must be"),
        ("realism", {"cannot_assess": True, "reason": "bored"}, "reason must be"),
        ("unknown", {}, "Unknown task kind"),
    ],
)
def test_invalid_answers_get_a_sentence(kind, answer, message):
    with pytest.raises(ValidationError) as info:
        validate_answer(kind, answer, rubric=RUBRIC)
    assert message in info.value.messages[0]


@pytest.mark.parametrize(
    "rubric",
    [[], "x", [{"key": "a"}], [{"key": "a b", "label": "A", "min": 1, "max": 5}],
     [{"key": "a", "label": "A", "min": 5, "max": 1}],
     [{"key": "a", "label": "A", "min": 0, "max": 10}],
     [{"key": "a", "label": "A", "min": 1, "max": 5}, {"key": "a", "label": "B", "min": 1, "max": 5}]],
)
def test_bad_rubric_definitions_are_refused(rubric):
    with pytest.raises(ValidationError):
        validate_rubric_definition(rubric)
