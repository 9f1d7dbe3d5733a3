"""Reports as prompts: the findings/impression sections, whitespace normalised; a report over the CLIP text
encoder's 77 tokens encoded truncated (recorded) or in 77-token chunks; the same encoding for sampling and training;
the prompt actually encoded stored on each generated image."""

from dataclasses import replace

import pytest
import torch

from inference.ml.prompts import encode_prompts, encoded_prompt
from inference.ml.report_text import report_prompt

LONG_REPORT = ("INDICATION: Shortness of breath.\n\nFINDINGS:   The heart is enlarged.  "
               + "There is a small left pleural effusion with adjacent atelectasis. " * 5
               + "\nIMPRESSION: Cardiomegaly and a small left effusion.\nCOMPARISON: none.")


def test_a_report_becomes_its_findings_and_impression_with_whitespace_normalised():
    prompt = report_prompt(LONG_REPORT)
    assert prompt.startswith("FINDINGS: The heart is enlarged. There is a small left")
    assert prompt.endswith("IMPRESSION: Cardiomegaly and a small left effusion.")
    assert "INDICATION" not in prompt and "COMPARISON" not in prompt and "  " not in prompt
    inline = "EXAM: CXR. FINDINGS: clear lungs. IMPRESSION: normal."
    assert report_prompt(inline) == "FINDINGS: clear lungs. IMPRESSION: normal."
    plain = "PA chest radiograph.\n  Heart size is normal. Impression: none."  # no section headers: all of it
    assert report_prompt(plain) == "PA chest radiograph. Heart size is normal. Impression: none."


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    from inference.ml.loading import PipelineSpec, load_pipeline

    return load_pipeline(PipelineSpec(base=str(tiny_sd_path)), device=torch.device("cpu"))


def test_truncate_keeps_75_tokens_and_records_it_chunks_keeps_all(pipe):
    prompt = report_prompt(LONG_REPORT)
    cut, whole = encoded_prompt(pipe.tokenizer, prompt, "truncate"), encoded_prompt(pipe.tokenizer, prompt, "chunks")
    assert cut.tokens > 77 and cut.kept == 75 and cut.shortened and cut.chunks == 1
    assert whole.kept == whole.tokens and not whole.shortened and whole.chunks == -(-whole.tokens // 75)
    assert len(cut.text) < len(whole.text) and "cardiomegaly" in whole.text and "cardiomegaly" not in cut.text
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt, "PA chest."], policy="chunks")
    assert embeds.shape[:2] == (2, 77 * whole.chunks)
    same = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt], policy="truncate")
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():  # truncate is exactly diffusers' own encoding
        torch.testing.assert_close(same, pipe.text_encoder(ids, return_dict=False)[0])


@pytest.mark.django_db
@pytest.mark.parametrize("policy", ["truncate", "chunks"])
def test_a_long_report_goes_through_generation_with_the_policy_recorded(tiny_sd_path, policy):
    from inference.jobs import generation_batch_run
    from inference.ml.generation_config import GenerationConfig
    from inference.models import ModelVersion
    from inference.services import generation_batch_create

    version = ModelVersion.objects.create(name=f"tiny-{policy}", base_path=str(tiny_sd_path))
    cfg = replace(GenerationConfig(steps=2, height=64, width=64, batch_size=2), prompt_policy=policy)
    prompt = report_prompt(LONG_REPORT)
    batch = generation_batch_create(model_version=version, count=2, prompts=[prompt, "PA chest."], seed=3,
                                    config=cfg, clean=False, owner=f"test:{policy}", enqueue=False)
    batch = generation_batch_run(batch=batch)
    assert batch.status == "done", batch.error_message
    long = [i for i in batch.images.all() if i.prompt == prompt]
    assert long, "the seeded plan drew the long report"
    for item in long:
        assert item.prompt_shortened == (policy == "truncate")
        assert (len(item.prompt_encoded) < len(prompt) - 20) == (policy == "truncate")
