"""Device, precision and process rank (``ravl_med.models.runtime``)."""

from __future__ import annotations

import pytest
import torch

from ravl_med.models.runtime import process_rank, resolve_device, resolve_precision


def test_resolve_precision_takes_a_device_name_or_a_torch_device():
    # The benchmark passes the resolved device name (regression: "str has no attribute type").
    for device in ("cpu", torch.device("cpu")):
        assert resolve_precision("auto", device) == "fp32"
        assert resolve_precision("bf16", device) == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", "cpu")


def test_device_and_rank_without_cuda_or_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert process_rank() == (0, 1, 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_rank().rank == 1 and process_rank().world_size == 2
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
