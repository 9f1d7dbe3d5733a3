"""Device selection and precision policy, with the accelerator backends patched (no GPU here)."""

import builtins
import logging

import pytest
import torch

from inference.ml import devices


@pytest.fixture(autouse=True)
def _reset_ipex(monkeypatch):
    monkeypatch.setattr(devices, "_ipex_state", None)


def _fake(monkeypatch, available: set[str]):
    monkeypatch.setattr(devices, "_available", lambda kind: kind == "cpu" or kind in available)


def test_auto_prefers_xpu_then_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(devices, "_maybe_ipex", lambda device: "skipped")
    _fake(monkeypatch, {"xpu", "cuda", "mps"})
    assert devices.pick_device("auto").type == "xpu"
    _fake(monkeypatch, {"cuda", "mps"})
    assert devices.pick_device("auto").type == "cuda"
    _fake(monkeypatch, {"mps"})
    assert devices.pick_device("auto").type == "mps"
    _fake(monkeypatch, set())
    assert devices.pick_device("auto").type == "cpu"


def test_a_named_device_is_honoured_or_refused(monkeypatch):
    _fake(monkeypatch, {"cuda"})
    assert devices.pick_device("cuda:1") == torch.device("cuda:1")
    assert devices.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="not available"):
        devices.pick_device("xpu")


def test_real_xpu_backend_is_consulted(monkeypatch):
    class FakeXPU:
        @staticmethod
        def is_available():
            return True

    monkeypatch.setattr(torch, "xpu", FakeXPU, raising=False)
    monkeypatch.setattr(devices, "_maybe_ipex", lambda device: "skipped")
    assert devices.pick_device("auto").type == "xpu"


def test_precision_policy():
    cpu = devices.precision_for(torch.device("cpu"))
    assert (cpu.frozen, cpu.trainable, cpu.autocast) == (torch.float32, torch.float32, None)
    xpu = devices.precision_for(torch.device("xpu"))
    assert xpu.frozen == torch.bfloat16 and xpu.trainable == torch.float32


def test_ipex_that_crashes_on_import_is_skipped_with_one_log_line(monkeypatch, caplog):
    real_import = builtins.__import__

    def explode(name, *args, **kwargs):
        if name == "intel_extension_for_pytorch":
            raise SystemExit("ipex only works with torch 2.8")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", explode)
    with caplog.at_level(logging.INFO, logger="cxr.inference"):
        assert devices._maybe_ipex(torch.device("xpu")) == "skipped"
        assert devices._maybe_ipex(torch.device("xpu")) == "skipped"
    lines = [r for r in caplog.records if "intel-extension-for-pytorch" in r.getMessage()]
    assert len(lines) == 1 and "native xpu" in lines[0].getMessage()
    assert devices._maybe_ipex(torch.device("cpu")) == "skipped"
