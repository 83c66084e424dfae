"""Region embeddings in the joint image-text space (RaVL stage 1, step 2).

Two modes:

* ``one_pass``: one image-tower forward per image for all its regions.
  - CNN (open_clip ``ModifiedResNet``): stem and layer1-4 once; each box is RoIAlign-ed on the
    layer4 map (stride 32) to the attention pool's grid (the size of its positional embedding), then
    passed through the tower's own ``attnpool`` (the same layers the whole image goes through). A box
    equal to the whole image reproduces the image embedding (the RoIAlign bins then sample the
    feature cells at their centres).
  - CNN hybrid towers (:class:`~ravl_med.models.hybrid.CNNImageTower`: timm EfficientNet and other
    timm CNNs, torchxrayvision DenseNet): the trunk runs once; each box is RoIAlign-ed on the trunk's
    last map (EfficientNet: the last block's output, before ``conv_head``; DenseNet: the last dense
    block's output, before ``norm5``) to the size of the whole image's map, then the tower's own
    head (EfficientNet ``conv_head`` + ``bn2`` with its activation; DenseNet ``norm5`` + ReLU), global
    average pooling and the projection. A whole-image box reproduces the image embedding.
  - ViT (open_clip ``VisionTransformer``), ``vit_pool`` (**project choice**):
    ``"token_mean"`` (default, as the method doc states it): the transformer runs once on the whole
    image; the patch tokens whose patch centre lies inside the box are averaged (the nearest token
    when none does), then the final norm ``ln_post`` and the projection ``proj``; whether the norm
    comes before or after the average is ``vit_norm``. The image embedding uses the class token
    instead, so a whole-image box agrees only loosely with it.
    ``"masked_cls"``: all blocks but the last run once; in the last block the class token attends
    only to itself and the patch tokens in the box (keys and values computed once per image, only
    the softmax mask differs per box), then ``ln_post`` and ``proj``. A whole-image box reproduces
    the image embedding exactly.
* ``crop``: reference mode: each box is cropped and resampled (RoIAlign,
  :class:`~ravl_med.data.transforms.CropRegions`) to the tower's input size and re-encoded.

Boxes are (R_i, 4) float x0, y0, x1, y1 in pixels of the preprocessed (B, 3, H, W) images (scale
boxes given on the ingestion image with :meth:`RadiographPreprocess.scale_boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn
from torchvision.ops import roi_align

from ravl_med.data.transforms import CropRegions
from ravl_med.models.hybrid import CNNImageTower

__all__ = ["RegionEmbedder"]

Mode = Literal["one_pass", "crop"]
VitNorm = Literal["pool_then_norm", "norm_then_pool"]
VitPool = Literal["token_mean", "masked_cls"]


def _image_tower(model: nn.Module) -> nn.Module:
    return model.visual if hasattr(model, "visual") else model


def _attention_pool_first_token(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` output for (N, C, h, w) maps, querying the mean token only.

    The module computes queries and the output projection for all h*w + 1 tokens and keeps the
    first; only the first (the mean token) is asked here: the same (N, D) result for about half the
    projection work and 1 / (h*w + 1) of the attention (one-pass regions run it once per box).
    """
    tokens = x.flatten(2).permute(2, 0, 1)  # (hw, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    tokens = tokens + pool.positional_embedding[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1],
        num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=pool.training, need_weights=False,
    )
    return out[0]


class RegionEmbedder:
    """Embeds candidate boxes of a batch of images.

    Gradients flow through it (mitigation trains on region embeddings); wrap calls in
    ``torch.no_grad()`` for discovery. The model's train/eval mode is left to the caller.

    Args:
        model: an open_clip ``CLIP`` or :class:`~ravl_med.models.hybrid.HybridCLIP` (or its image
            tower) with a ``ModifiedResNet``, ``VisionTransformer`` or hybrid ``CNNImageTower``
            image tower (``crop`` mode works with any tower).
        mode: ``"one_pass"`` or ``"crop"``.
        vit_pool: ViT only: ``"token_mean"`` or ``"masked_cls"`` (see the module docstring).
        vit_norm: ViT ``token_mean`` only: ``"pool_then_norm"`` averages the raw tokens then applies ``ln_post``;
            ``"norm_then_pool"`` normalises each token first (as the class token is).
        crop_batch_size: crops encoded per forward in ``crop`` mode.
        sampling_ratio: RoIAlign sampling points per bin (-1 adaptive) in ``one_pass`` CNN mode.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: Mode = "one_pass",
        vit_norm: VitNorm = "pool_then_norm",
        vit_pool: VitPool = "token_mean",
        crop_batch_size: int = 64,
        sampling_ratio: int = -1,
    ) -> None:
        if mode not in ("one_pass", "crop"):
            raise ValueError(f"mode must be 'one_pass' or 'crop', got {mode!r}")
        if vit_norm not in ("pool_then_norm", "norm_then_pool"):
            raise ValueError(f"vit_norm must be 'pool_then_norm' or 'norm_then_pool', got {vit_norm!r}")
        if vit_pool not in ("token_mean", "masked_cls"):
            raise ValueError(f"vit_pool must be 'token_mean' or 'masked_cls', got {vit_pool!r}")
        self.model, self.mode, self.vit_norm, self.vit_pool = model, mode, vit_norm, vit_pool
        self.crop_batch_size, self.sampling_ratio = int(crop_batch_size), int(sampling_ratio)
        self.tower = _image_tower(model)
        if mode == "one_pass" and not isinstance(self.tower, (ModifiedResNet, VisionTransformer, CNNImageTower)):
            raise NotImplementedError(
                f"one-pass region embeddings need a ModifiedResNet, VisionTransformer or CNNImageTower tower, "
                f"got {type(self.tower).__name__}; use mode='crop'"
            )
        if isinstance(self.tower, VisionTransformer) and mode == "one_pass" and self.tower.attn_pool is not None:
            raise NotImplementedError("one-pass region embeddings do not support attentional-pool ViTs; use mode='crop'")

    def __call__(self, images: torch.Tensor, boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Args:
            images: (B, K, H, W) preprocessed images (K = the tower's input channels, 3 or 1).
            boxes: B tensors (R_i, 4), x0, y0, x1, y1 in pixels of ``images``.

        Returns:
            B tensors (R_i, D), L2-normalised rows.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, K, H, W), got {tuple(images.shape)}")
        if len(boxes) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(boxes)} box tensors")
        rois = [torch.as_tensor(b, dtype=torch.float32, device=images.device).reshape(-1, 4) for b in boxes]
        counts = [r.shape[0] for r in rois]
        if sum(counts) == 0:
            dim = self.tower.output_dim
            return [images.new_zeros((0, dim)) for _ in counts]
        if self.mode == "crop":
            flat = self._crop(images, rois)
        elif isinstance(self.tower, ModifiedResNet):
            flat = self._one_pass_resnet(images, rois)
        elif isinstance(self.tower, CNNImageTower):
            flat = self._one_pass_cnn_tower(images, rois)
        elif self.vit_pool == "masked_cls":
            flat = self._one_pass_vit_masked_cls(images, rois)
        else:
            flat = self._one_pass_vit(images, rois)
        return list(F.normalize(flat.float(), dim=-1).split(counts))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "encode_image"):
            return self.model.encode_image(x)
        return self.model(x)

    def _crop(self, images: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        size = images.shape[-1]
        cropper = CropRegions(size)
        crops = torch.cat([cropper(image, r) for image, r in zip(images, rois)])
        return torch.cat([self._encode(chunk) for chunk in crops.split(self.crop_batch_size)])

    def _one_pass_resnet(self, images: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        tower = self.tower
        x = tower.stem(images.to(tower.conv1.weight.dtype))
        features = tower.layer4(tower.layer3(tower.layer2(tower.layer1(x))))  # (B, C, h, w), stride 32
        grid = round((tower.attnpool.positional_embedding.shape[0] - 1) ** 0.5)
        pooled = roi_align(
            features,
            [r.to(features.dtype) for r in rois],
            output_size=grid,
            spatial_scale=features.shape[-1] / images.shape[-1],
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )  # (sum R, C, grid, grid)
        return _attention_pool_first_token(tower.attnpool, pooled)

    def from_cnn_trunk(self, features: torch.Tensor, boxes: Sequence[torch.Tensor], image_side: int) -> list[torch.Tensor]:
        """``one_pass`` regions of a hybrid CNN tower from its trunk output, computed elsewhere.

        For a trunk output that does not come from ``tower.trunk(images)`` in this call, e.g.
        ``tower.trunk_from_frozen`` of cached frozen-prefix maps (:mod:`~ravl_med.models.feature_cache`).

        Args:
            features: (B, C', h, w) ``tower.trunk`` output of (B, K, image_side, image_side) images.
            boxes: B tensors (R_i, 4), x0, y0, x1, y1 in pixels of those images.
            image_side: the images' side N, pixels.

        Returns:
            B tensors (R_i, D), L2-normalised rows (as :meth:`__call__`).
        """
        if self.mode != "one_pass" or not isinstance(self.tower, CNNImageTower):
            raise NotImplementedError("from_cnn_trunk needs mode='one_pass' and a CNNImageTower tower")
        rois = [torch.as_tensor(b, dtype=torch.float32, device=features.device).reshape(-1, 4) for b in boxes]
        flat = self._pool_cnn_trunk(features, rois, image_side)
        return list(F.normalize(flat.float(), dim=-1).split([r.shape[0] for r in rois]))

    def _one_pass_cnn_tower(self, images: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        # (B, C', h, w), stride 32 for EfficientNet and DenseNet
        return self._pool_cnn_trunk(self.tower.trunk(images), rois, images.shape[-1])

    def _pool_cnn_trunk(self, features: torch.Tensor, rois: list[torch.Tensor], image_side: int) -> torch.Tensor:
        # Pool each box to the whole image's grid, so a whole-image box samples every cell at its centre.
        pooled = roi_align(
            features,
            [r.to(features.dtype) for r in rois],
            output_size=tuple(features.shape[-2:]),
            spatial_scale=features.shape[-1] / image_side,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )  # (sum R, C', h, w)
        return self.tower.embed_feature_map(pooled)

    def _token_weights(self, box: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(R, 4) boxes, (N, 2) token centres (x, y) -> (R, N) averaging weights, rows sum to 1."""
        x, y = centres[:, 0], centres[:, 1]
        inside = (
            (x[None] >= box[:, 0:1]) & (x[None] < box[:, 2:3]) & (y[None] >= box[:, 1:2]) & (y[None] < box[:, 3:4])
        ).float()
        empty = inside.sum(dim=1) == 0
        if empty.any():  # small boxes between centres: the token nearest to the box centre
            box_centres = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], dim=1)
            nearest = torch.cdist(box_centres[empty], centres).argmin(dim=1)
            inside[empty] = F.one_hot(nearest, centres.shape[0]).float()
        return inside / inside.sum(dim=1, keepdim=True)

    def _patch_centres(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2) pixel centres (x, y) of the ViT patch tokens, row-major over the patch grid."""
        gh, gw = self.tower.grid_size
        sy, sx = images.shape[-2] / gh, images.shape[-1] / gw
        ys, xs = torch.meshgrid(
            (torch.arange(gh, device=images.device) + 0.5) * sy,
            (torch.arange(gw, device=images.device) + 0.5) * sx,
            indexing="ij",
        )
        return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)

    def _one_pass_vit_masked_cls(self, images: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        tower = self.tower
        transformer = tower.transformer
        if tower.pool_type != "tok" or not getattr(transformer, "batch_first", False):
            raise NotImplementedError("masked_cls needs a class-token, batch-first open_clip ViT; use vit_pool='token_mean'")
        block = transformer.resblocks[-1]
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None or hasattr(block, "ln_1_kv"):
            raise NotImplementedError(f"masked_cls does not support {type(block).__name__} blocks; use vit_pool='token_mean'")
        x = tower._embeds(images)
        for earlier in transformer.resblocks[:-1]:
            x = earlier(x)
        batch, length, width = x.shape
        heads = attn.num_heads
        head_dim = width // heads
        h = block.ln_1(x)
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        # The class-token query is the same for every box of an image; only the key mask differs.
        q = F.linear(h[:, :1], w_q, b_q).view(batch, heads, head_dim)
        k = F.linear(h, w_k, b_k).view(batch, length, heads, head_dim)
        v = F.linear(h, w_v, b_v).view(batch, length, heads, head_dim)
        scores = torch.einsum("bhd,blhd->bhl", q, k) / head_dim**0.5  # (B, heads, 1 + N)
        centres = self._patch_centres(images)
        pooled = []
        for i, r in enumerate(rois):
            allowed = self._token_weights(r, centres) > 0  # (R, N)
            allowed = torch.cat([allowed.new_ones((r.shape[0], 1)), allowed], dim=1)  # the class token itself
            weights = scores[i][None].masked_fill(~allowed[:, None, :], float("-inf")).softmax(dim=-1)
            out = attn.out_proj(torch.einsum("rhl,lhd->rhd", weights, v[i]).reshape(r.shape[0], width))
            cls = x[i, 0][None] + block.ls_1(out)
            pooled.append(cls + block.ls_2(block.mlp(block.ln_2(cls))))
        pooled = tower.ln_post(torch.cat(pooled))
        return pooled @ tower.proj if tower.proj is not None else pooled

    def _one_pass_vit(self, images: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        tower = self.tower
        tokens = tower.transformer(tower._embeds(images))  # (B, 1 + N, W)
        tokens = tokens[:, 1:]  # patch tokens, row-major over the (gh, gw) grid
        centres = self._patch_centres(images)
        if self.vit_norm == "norm_then_pool":
            tokens = tower.ln_post(tokens)
        pooled = torch.cat(
            [self._token_weights(r, centres).to(tokens.dtype) @ t for t, r in zip(tokens, rois)]
        )  # (sum R, W)
        if self.vit_norm == "pool_then_norm":
            pooled = tower.ln_post(pooled)
        return pooled @ tower.proj if tower.proj is not None else pooled
