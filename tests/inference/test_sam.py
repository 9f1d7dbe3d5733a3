"""SAM builders: the tiny kind round-trips through a checkpoint, the real kinds match Meta's architecture, and bad
weights fail with a WeightsError that names the file and the kind."""

from dataclasses import fields

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l

from inference.ml import errors
from inference.ml.sam import SAM_KINDS, SamSpec, WeightsError, build_sam, build_tiny_sam, save_sam

# Parameter counts of Meta's official models (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth).
OFFICIAL_PARAMS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}
OFFICIAL_BUILDERS = {"vit_b": build_sam_vit_b, "vit_l": build_sam_vit_l, "vit_h": build_sam_vit_h}


def _box_logits(model, image: np.ndarray, box) -> np.ndarray:
    predictor = SamPredictor(model)
    predictor.set_image(image)
    logits, _, _ = predictor.predict(box=np.array(box), multimask_output=False, return_logits=True)
    return logits


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "sam-tiny.pth"
    save_sam(build_tiny_sam(seed=3), path)
    return path


def test_tiny_save_load_gives_identical_mask_logits(tiny_checkpoint):
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    before = _box_logits(build_tiny_sam(seed=3), image, [20, 30, 90, 100])
    after = _box_logits(build_sam("tiny", tiny_checkpoint), image, [20, 30, 90, 100])
    assert before.shape == (1, 120, 160)
    np.testing.assert_array_equal(before, after)


def test_tiny_is_seeded_small_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_tiny_sam(seed=0), build_tiny_sam(seed=0), build_tiny_sam(seed=1)
    assert torch.rand(1) == expected
    key = "image_encoder.patch_embed.proj.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    assert sum(p.numel() for p in a.parameters()) < 1_000_000
    assert a.image_encoder.img_size == 256 and not a.training


@pytest.mark.parametrize("kind", ["vit_b", "vit_l", "vit_h"])
def test_real_kinds_match_the_official_architecture(kind):
    # On the meta device nothing is allocated, so even ViT-H is sized in milliseconds.
    model = build_sam(kind, device="meta")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[kind]
    with torch.device("meta"):
        official = OFFICIAL_BUILDERS[kind]()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {
        k: tuple(v.shape) for k, v in official.state_dict().items()
    }  # so official .pth files load
    spec = SAM_KINDS[kind]
    assert spec.image_size == 1024 and spec.prompt_embed_dim == 256


def test_vit_b_is_about_94m_parameters():
    assert sum(p.numel() for p in build_sam("vit_b", device="meta").parameters()) / 1e6 == pytest.approx(
        93.7, abs=0.1
    )


def test_spec_fields_have_help_and_a_spec_builds_directly():
    assert all(f.metadata.get("help") for f in fields(SamSpec))
    model = build_sam(SamSpec.tiny(), device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_weights_error_is_the_projects_runtime_error():
    assert WeightsError is errors.WeightsError and issubclass(WeightsError, RuntimeError)


def _message(exc_info) -> str:
    message = str(exc_info.value)
    assert message.endswith("."), message  # a sentence, not a bare key or a traceback line
    assert len(message) < 600
    return message


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(WeightsError) as exc_info:
        build_sam("vit_b", path)
    message = _message(exc_info)
    assert str(path) in message and "'vit_b'" in message and "not found" in message


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "sam-tiny.pth"
    path.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(WeightsError) as exc_info:
        build_sam("tiny", path)
    message = _message(exc_info)
    assert str(path) in message and "'tiny'" in message and "corrupt" in message


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(WeightsError) as exc_info:
        build_sam("tiny", path)
    assert str(path) in _message(exc_info)


def test_checkpoint_of_another_kind(tiny_checkpoint):
    with pytest.raises(WeightsError) as exc_info:
        build_sam("vit_b", tiny_checkpoint)
    message = _message(exc_info)
    assert str(tiny_checkpoint) in message and "'vit_b'" in message
    assert "looks like a 'tiny' checkpoint" in message and "shape mismatches" in message


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError) as exc_info:
        build_sam("tiny", path)
    assert "not a state dict" in _message(exc_info)


def test_unknown_kind():
    with pytest.raises(ValueError, match="Unknown SAM kind 'vit_x'"):
        build_sam("vit_x")
