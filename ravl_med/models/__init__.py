"""Vision-language backbones: registry, offline weights, zero-shot scoring and region embeddings."""

from ravl_med.models.embed import EmbeddingSet, embed_dataset, embed_share
from ravl_med.models.hybrid import HybridCLIP
from ravl_med.models.preprocess import RadiographPreprocess
from ravl_med.models.regions import RegionEmbedder
from ravl_med.models.registry import (
    BackboneSpec,
    add_backbone_config,
    create_backbone,
    get_backbone_spec,
    list_backbones,
)
from ravl_med.models.weights import (
    ChecksumError,
    KeyReport,
    WeightsError,
    file_sha256,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from ravl_med.models.zeroshot import (
    CXR_TEMPLATES,
    class_text_embeddings,
    zero_shot_logits,
    zero_shot_scores,
)

__all__ = [
    "CXR_TEMPLATES",
    "BackboneSpec",
    "ChecksumError",
    "EmbeddingSet",
    "HybridCLIP",
    "KeyReport",
    "RadiographPreprocess",
    "RegionEmbedder",
    "WeightsError",
    "add_backbone_config",
    "class_text_embeddings",
    "create_backbone",
    "embed_dataset",
    "embed_share",
    "file_sha256",
    "get_backbone_spec",
    "list_backbones",
    "load_checkpoint",
    "load_state_dict",
    "save_checkpoint",
    "zero_shot_logits",
    "zero_shot_scores",
]
