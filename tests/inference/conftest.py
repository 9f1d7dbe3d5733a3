import pytest


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny random SD pipeline on disk, built once per test session through the production builder."""
    from inference.ml.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture
def cpu():
    import torch

    return torch.device("cpu")
