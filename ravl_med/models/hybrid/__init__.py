"""MedCLIP-style hybrid backbones: a pretrained CNN image tower and a pretrained text tower, each with
a projection head into a shared space, aligned contrastively (open_clip's ``CLIP`` interface).

MedCLIP (Wang et al. 2022) builds its model this way: an ImageNet-pretrained image encoder and a
clinical BERT text encoder, each followed by a projection head, then contrastive fine-tuning on chest
X-ray image-report pairs. :class:`HybridCLIP` gives such a model the interface the rest of this
package uses (``visual``, ``encode_image``, ``encode_text``, ``forward`` -> ``(image_features,
text_features, logit_scale.exp())``, ``logit_scale``), so :class:`open_clip.loss.ClipLoss`,
:mod:`~ravl_med.models.zeroshot` and :class:`~ravl_med.models.regions.RegionEmbedder` work unchanged.

Towers (``vision_cfg["tower"]`` / ``text_cfg["tower"]`` in a registry config):

* ``"timm"``: any timm CNN built with ``pretrained=False``; for timm ``EfficientNet`` models the
  trunk ends at the last block (before ``conv_head``), the head is ``conv_head`` + ``bn2`` (its
  activation included); for other timm CNNs the trunk is ``forward_features`` and the head is empty.
  Then global average pooling and the projection head.
* ``"xrv_densenet"``: torchxrayvision's ``DenseNet(weights=None)`` (DenseNet-121, 1-channel input in
  [-1024, 1024]); the trunk ends at the last dense block, the head is the final ``norm5`` + ReLU.
* ``"hf"`` (text): a Hugging Face ``AutoModel`` read from a local folder (``local_files_only``),
  mean (or CLS) pooling over the attention mask, then the projection head.

Weights come only from local files or folders (:mod:`ravl_med.models.weights`): a path, or
``package:<module>/<relative path>`` for a file shipped inside an installed Python package (found with
:func:`importlib.util.find_spec`, never downloaded; see
:func:`~ravl_med.models.weights.resolve_local_path`). A missing path raises ``FileNotFoundError``
naming it; a ``*_sha256`` value is checked before the file is read.

A generic config a hospital can point at its own towers (register it with
:func:`~ravl_med.models.registry.add_backbone_config`)::

    {
      "kind": "hybrid",
      "embed_dim": 512,
      "vision_cfg": {"tower": "timm", "timm_model_name": "densenet121", "image_size": 224,
                     "checkpoint": "/models/densenet121.safetensors", "checkpoint_sha256": "...",
                     "projection": "mlp"},
      "text_cfg": {"tower": "hf", "hf_model_path": "/models/Bio_ClinicalBERT",
                   "context_length": 128, "pooling": "mean", "projection": "mlp"},
      "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]
    }

Modules: :mod:`~ravl_med.models.hybrid.image` (image towers), :mod:`~ravl_med.models.hybrid.text`
(text tower and tokenizer), :mod:`~ravl_med.models.hybrid.projection` (the projection head),
:mod:`~ravl_med.models.hybrid.model` (:class:`HybridCLIP`, :func:`build_hybrid`).
"""

from ravl_med.models.hybrid.image import (
    KEY_MAPS,
    CNNImageTower,
    TimmImageTower,
    XrvDenseNetImageTower,
    remap_lukemelas_efficientnet,
)
from ravl_med.models.hybrid.model import HybridCLIP, build_hybrid, validate_hybrid_config
from ravl_med.models.hybrid.projection import ProjectionHead
from ravl_med.models.hybrid.text import HFTextTower, HFTokenizer

__all__ = [
    "KEY_MAPS",
    "CNNImageTower",
    "HFTextTower",
    "HFTokenizer",
    "HybridCLIP",
    "ProjectionHead",
    "TimmImageTower",
    "XrvDenseNetImageTower",
    "build_hybrid",
    "remap_lukemelas_efficientnet",
    "validate_hybrid_config",
]
