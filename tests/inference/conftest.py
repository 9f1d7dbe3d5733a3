import pytest


@pytest.fixture
def cpu():
    import torch

    return torch.device("cpu")
