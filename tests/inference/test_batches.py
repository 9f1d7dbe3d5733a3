"""Generation batches as jobs: enqueued on commit, idempotent, resumable, warm cache, errors on the row."""

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from inference.jobs import generation_batch_run
from inference.ml.generation_config import GenerationConfig
from inference.ml.loading import PIPELINES
from inference.models import GeneratedImage, GenerationBatch, ModelVersion
from inference.services import generation_batch_create
from inference.signals import batch_finished
from inference.tasks import generation_batch_run_task

pytestmark = pytest.mark.django_db
CFG = GenerationConfig(steps=3, height=64, width=64, batch_size=4, images_per_prompt=2)


@pytest.fixture
def version(tiny_sd_path):
    return ModelVersion.objects.create(name="tiny", base_path=str(tiny_sd_path))


def pixels(key):
    with default_storage.open(key) as fh:
        return np.asarray(PILImage.open(io.BytesIO(fh.read())))


def test_batch_runs_on_commit_and_twice_gives_the_same_images(version, django_capture_on_commit_callbacks):
    seen = []
    batch_finished.connect(lambda sender, batch, **kw: seen.append(batch.status), weak=False,
                                    dispatch_uid="test-batch-finished")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            batch = generation_batch_create(model_version=version, count=6, prompts=["PA chest."],
                                                     seed=5, config=CFG, clean=False, owner="test:1")
        batch.refresh_from_db()
        assert batch.status == "done" and batch.progress["generated"] == 6 and batch.heartbeat_at
        items = list(batch.images.order_by("index"))
        assert [i.index for i in items] == list(range(6))
        assert len({i.seed for i in items}) == 6
        assert generation_batch_run_task(batch_pk=batch.pk) == "done"  # run twice: nothing new
        assert batch.images.count() == 6 and seen == ["done"]
    finally:
        batch_finished.disconnect(dispatch_uid="test-batch-finished")


def test_a_crashed_batch_resumes_without_duplicates(version):
    batch = GenerationBatch.objects.create(model_version=version, count=5, prompts=["AP chest."], seed=9,
                                           config=CFG.as_dict(), clean=False)
    generation_batch_run(batch=batch)
    originals = {i.index: pixels(i.raw_key) for i in batch.images.all()}
    GeneratedImage.objects.filter(batch=batch, index__in=[1, 3]).delete()
    GenerationBatch.objects.filter(pk=batch.pk).update(status="running")
    batch.refresh_from_db()
    loads = PIPELINES.loads
    generation_batch_run(batch=batch)
    assert PIPELINES.loads == loads  # warm worker: the second run loads nothing
    assert sorted(batch.images.values_list("index", flat=True)) == [0, 1, 2, 3, 4]
    for item in batch.images.all():
        np.testing.assert_array_equal(pixels(item.raw_key), originals[item.index])  # deterministic per seed


def test_missing_weights_fail_the_batch_with_a_clear_error(tmp_path):
    version = ModelVersion.objects.create(name="gone", base_path=str(tmp_path / "nowhere"))
    batch = GenerationBatch.objects.create(model_version=version, count=2, prompts=[], seed=1,
                                           config=CFG.as_dict(), clean=False)
    assert generation_batch_run_task(batch_pk=batch.pk) == "failed"
    batch.refresh_from_db()
    version.refresh_from_db()
    assert "Base weights not found" in batch.error_message and batch.error_message == version.load_error
    assert not batch.images.exists()


def test_pairs_share_a_prompt(version):
    batch = GenerationBatch.objects.create(model_version=version, count=4, prompts=["a.", "b.", "c."], seed=2,
                                           config=CFG.as_dict(), clean=False)
    generation_batch_run(batch=batch)
    prompts = list(batch.images.order_by("index").values_list("prompt", flat=True))
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3]


def test_cleaning_keeps_raw_image_and_mask_linked_to_the_cleaned_one(version):
    batch = GenerationBatch.objects.create(model_version=version, count=2, prompts=["PA chest."], seed=4,
                                           config=CFG.as_dict(), clean=True)
    generation_batch_run(batch=batch)
    for item in batch.images.all():
        raw, mask, cleaned = pixels(item.raw_key), pixels(item.mask_key), pixels(item.cleaned_key)
        assert raw.shape == mask.shape == cleaned.shape == (64, 64)
        assert item.mask_fraction == pytest.approx((mask > 0).mean())
        np.testing.assert_array_equal(cleaned[mask == 0], raw[mask == 0])  # only masked pixels change


def test_tiny_presets_follow_the_tiny_base_s_own_size_and_real_weights_get_the_settings(settings, tmp_path):
    """One rule for "tiny or full": a version on a base under CXR_MODELS_DIR/tiny* samples and trains at its UNet's
    native side (the demo's shipped base is 128 px); a version on real weights gets the configured defaults."""
    import json

    from annotation.rounds.config import RoundConfig, finetune_settings
    from inference.services import generation_config_default, tiny_size

    settings.CXR_MODELS_DIR = tmp_path / "models"
    unet = settings.CXR_MODELS_DIR / "tiny-demo" / "sd" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"sample_size": 16}))
    demo = ModelVersion.objects.create(name="tiny-demo", base_path=str(unet.parent))
    real = ModelVersion.objects.create(name="sd21", base_path=str(tmp_path / "sd21"))
    assert tiny_size(demo) == 128 and tiny_size(real) is None
    gen = generation_config_default(demo)
    assert (gen.height, gen.width, gen.steps) == (128, 128, 8)
    assert finetune_settings(RoundConfig(), demo).resolution == 128
    assert generation_config_default(real).height == settings.CXR_GENERATION.get("height", 512)
    assert finetune_settings(RoundConfig(), real).resolution == 512
