"""Image and region embeddings of a whole dataset in the joint space, cached and resumable (RaVL stage 1).

:func:`embed_dataset` runs a dataset through the preprocessing, ``model.encode_image`` and a
:class:`~ravl_med.models.regions.RegionEmbedder` in batches, and returns an :class:`EmbeddingSet`:
one unit-norm embedding per image and per candidate region, with the region boxes and image labels
that the discovery steps (zero-shot scores, clustering, gaps) read.

Cache layout (``cache_dir`` given)::

    cache_dir/<fingerprint>/fingerprint.json     what the fingerprint was computed from (for people)
    cache_dir/<fingerprint>/shard-000000.npz     batch 0: rows [0, batch_size)
    cache_dir/<fingerprint>/shard-000001.npz     batch 1: rows [batch_size, 2 * batch_size) ...

The fingerprint hashes everything that changes the numbers: the image tower's weights (a hash of its
state dict, or the caller's ``fingerprint``, e.g. a checkpoint sha256), its architecture (parameter
names and shapes), the region mode and embedder options, the preprocessing, the dataset's ingestion
config, the ordered image keys, the precision and the batch size (which fixes the shard layout).
Each shard is written atomically (temporary name, then rename), so a shard file that exists is
complete; a run that is killed and restarted with the same arguments loads the finished shards and
computes only the missing batches. Temporary files left by a killed run (``.shard-*.tmp.npz``) are
ignored. The cache assumes that the file behind a key does not change; use a new key (or a new
``cache_dir``) when images are replaced.

Several processes (``torchrun``): :func:`embed_share` embeds one process's share of the batches
into the cache, batch ``b`` going to process ``b % world_size``, and writes nothing else. Once every
process has returned (the caller's barrier), :func:`embed_dataset` with the same arguments reads all
the shards and computes none. A shard depends only on its batch's images (the batches are fixed by
``batch_size``, whichever process computes them), so the result is the :class:`EmbeddingSet` a
single process computes, on the same kind of device and with the same thread count. A batch whose
shard did not reach the reading process (a cache folder that is not shared between machines) is
computed there, as when resuming.

In ``one_pass`` mode with a CNN tower (open_clip ``ModifiedResNet``, hybrid ``CNNImageTower``)
the image embedding is taken from the same forward pass as the regions: the whole image is added as
one more box, which reproduces ``encode_image`` (see :mod:`ravl_med.models.regions`). Other towers
and ``crop`` mode call ``encode_image`` separately.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torch.utils.data import DataLoader

from ravl_med.data.atomic import atomic_path
from ravl_med.models.hybrid import CNNImageTower
from ravl_med.models.preprocess import RadiographPreprocess
from ravl_med.models.regions import RegionEmbedder
from ravl_med.models.runtime import resolve_precision

__all__ = [
    "CACHE_VERSION",
    "EmbeddingSet",
    "embed_dataset",
    "embed_share",
    "embedding_fingerprint",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

#: Bumped when the shard format or the computation changes, so that old caches are not reused.
CACHE_VERSION = 1
_ARRAYS = ("image_embeddings", "region_embeddings", "region_image", "region_boxes", "labels")


@dataclass
class EmbeddingSet:
    """Unit-norm embeddings of N images and their M candidate regions.

    Regions are stored image by image (``region_image`` is non-decreasing).

    Attributes:
        keys: (N,) image keys, in dataset order.
        image_embeddings: (N, D) float32, unit rows.
        region_embeddings: (M, D) float32, unit rows.
        region_image: (M,) int64 index into ``keys`` of the image each region belongs to.
        region_boxes: (M, 4) float32 x0, y0, x1, y1 in pixels of the model input (N x N after
            preprocessing).
        labels: (N,) int64 class index per image (-1: not one of the classes).
        fingerprint: the cache fingerprint the set was computed under ("" when not cached).
    """

    keys: np.ndarray
    image_embeddings: np.ndarray
    region_embeddings: np.ndarray
    region_image: np.ndarray
    region_boxes: np.ndarray
    labels: np.ndarray
    fingerprint: str = ""
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.keys = np.asarray(self.keys, dtype=str).reshape(-1)
        self.image_embeddings = np.asarray(self.image_embeddings, dtype=np.float32)
        self.region_embeddings = np.asarray(self.region_embeddings, dtype=np.float32)
        self.region_image = np.asarray(self.region_image, dtype=np.int64).reshape(-1)
        self.region_boxes = np.asarray(self.region_boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n, m = len(self.keys), len(self.region_image)
        if self.image_embeddings.ndim != 2 or self.image_embeddings.shape[0] != n:
            raise ValueError(f"image_embeddings must be ({n}, D), got {self.image_embeddings.shape}")
        dim = self.image_embeddings.shape[1]
        if self.region_embeddings.shape != (m, dim) and not (m == 0 and self.region_embeddings.size == 0):
            raise ValueError(f"region_embeddings must be ({m}, {dim}), got {self.region_embeddings.shape}")
        self.region_embeddings = self.region_embeddings.reshape(m, dim)
        if self.region_boxes.shape[0] != m or self.labels.shape[0] != n:
            raise ValueError(f"region_boxes must have {m} rows and labels {n}")
        if m and (np.any(np.diff(self.region_image) < 0) or self.region_image[0] < 0 or self.region_image[-1] >= n):
            raise ValueError("region_image must be non-decreasing indices into keys")
        counts = np.bincount(self.region_image, minlength=n) if m else np.zeros(n, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.image_embeddings.shape[1])

    @property
    def region_counts(self) -> np.ndarray:
        """(N,) int64 number of regions per image."""
        return np.diff(self._offsets)

    def regions_of(self, i: int) -> np.ndarray:
        """(R_i,) int64 indices into the region arrays of image ``i``'s regions."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        i = i % len(self)
        return np.arange(self._offsets[i], self._offsets[i + 1], dtype=np.int64)

    def save(self, folder: str | Path) -> Path:
        """Writes one ``.npy`` per array plus ``embeddings.json`` (fingerprint, sizes), each atomically.

        ``embeddings.json`` is written last, so a folder that has it is complete.

        Returns:
            the folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "embeddings.json").unlink(missing_ok=True)
        for name in ("keys", *_ARRAYS):
            with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as handle:
                np.save(handle, getattr(self, name), allow_pickle=False)
        meta = {
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "n_images": len(self),
            "n_regions": len(self.region_image),
            "dim": self.dim,
        }
        with atomic_path(folder / "embeddings.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingSet:
        """Reads a folder written by :meth:`save`.

        Raises:
            FileNotFoundError: no ``embeddings.json`` (nothing saved, or the save did not finish).
            ValueError: arrays that do not match each other or the JSON.
        """
        folder = Path(folder)
        meta_path = folder / "embeddings.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not an EmbeddingSet folder, or its save did not finish")
        meta = json.loads(meta_path.read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in ("keys", *_ARRAYS)}
        result = cls(**arrays, fingerprint=str(meta.get("fingerprint", "")))
        if len(result) != meta["n_images"] or len(result.region_image) != meta["n_regions"]:
            raise ValueError(f"{folder}: arrays do not match {meta_path.name}")
        return result


# --------------------------------------------------------------------------------------------- #
# Fingerprints


def _image_tower(model: nn.Module) -> nn.Module:
    return model.visual if hasattr(model, "visual") else model


def weights_fingerprint(model: nn.Module) -> str:
    """BLAKE2b hex digest of the image tower's state dict (names, dtypes, shapes and bytes).

    Only the image tower counts (``model.visual`` when present): the text tower does not change image
    or region embeddings. Runs at memory speed (about a second per GB of weights); callers that know
    the checkpoint's sha256 can pass it to :func:`embed_dataset` instead.
    """
    digest = hashlib.blake2b(digest_size=20)
    state = _image_tower(model).state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _architecture(model: nn.Module) -> str:
    """Digest of the tower's class and parameter names and shapes (cheap: no tensor bytes)."""
    tower = _image_tower(model)
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{type(model).__name__}/{type(tower).__name__}\n".encode())
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
    return digest.hexdigest()


def _dataset_keys(dataset) -> list[str]:
    keys = getattr(dataset, "keys", None)
    if keys is not None and not callable(keys):
        return [str(k) for k in keys]
    # Generic datasets: read every item once (slow for large sets; give them a ``keys`` property).
    return [str(dataset[i]["key"]) for i in range(len(dataset))]


def _ingest_json(dataset) -> str | None:
    config = getattr(dataset, "ingest_config", None)
    if config is None:
        return None
    dump = getattr(config, "model_dump_json", None)
    return dump() if dump is not None else json.dumps(config, sort_keys=True, default=str)


def embedding_fingerprint(
    model: nn.Module,
    preprocess: RadiographPreprocess,
    dataset,
    *,
    mode: str = "one_pass",
    embedder_options: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    fingerprint: str | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache fingerprint of an :func:`embed_dataset` call and the parts it was hashed from.

    Args:
        model, preprocess, dataset, mode, batch_size: as for :func:`embed_dataset`.
        embedder_options: extra :class:`RegionEmbedder` arguments (``vit_pool``, ``vit_norm``,
            ``sampling_ratio``; ``crop_batch_size`` does not count).
        precision: ``"fp32"`` or ``"bf16"`` (the resolved precision).
        fingerprint: identity of the model's weights (e.g. the checkpoint's sha256); ``None``
            hashes the image tower's state dict (:func:`weights_fingerprint`).
        keys: the dataset's keys when already known.

    Returns:
        ``(hex digest (24 characters), parts)``.
    """
    options = {k: v for k, v in sorted((embedder_options or {}).items()) if k != "crop_batch_size"}
    keys = _dataset_keys(dataset) if keys is None else list(keys)
    parts: dict[str, Any] = {
        "version": CACHE_VERSION,
        "weights": fingerprint if fingerprint is not None else weights_fingerprint(model),
        "architecture": _architecture(model),
        "region_mode": mode,
        "embedder_options": options,
        "preprocess": {
            "image_size": int(preprocess.image_size),
            "channels": int(preprocess.channels),
            "mean": [round(float(v), 8) for v in preprocess.mean.reshape(-1).tolist()],
            "std": [round(float(v), 8) for v in preprocess.std.reshape(-1).tolist()],
        },
        "ingest": _ingest_json(dataset),
        "n_images": len(keys),
        "keys": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
        "precision": precision,
        "batch_size": int(batch_size),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return digest, parts


# --------------------------------------------------------------------------------------------- #
# Embedding


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Only what embedding needs (datasets without ``text`` work too)."""
    return {
        "image": torch.stack([torch.as_tensor(item["image"], dtype=torch.float32) for item in items]),
        "regions": [torch.as_tensor(item["regions"], dtype=torch.float32).reshape(-1, 4) for item in items],
        "label": torch.tensor([int(item["label"]) for item in items], dtype=torch.int64),
        "key": [str(item["key"]) for item in items],
    }


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:06d}.npz"


def _read_shard(path: Path, expected_keys: list[str]) -> dict[str, np.ndarray] | None:
    """A finished shard's arrays, or ``None`` when absent, unreadable or not for these keys."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            shard = {name: data[name] for name in data.files}
        if shard["keys"].tolist() != expected_keys:
            raise ValueError("keys differ from the dataset's")
        if int(shard["region_counts"].sum()) != shard["region_embeddings"].shape[0]:
            raise ValueError("region counts do not add up")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        logger.warning("ignoring cache shard %s (%s); it will be recomputed", path, err)
        return None
    return shard


def _write_shard(path: Path, shard: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **shard)


def _image_from_regions(embedder: RegionEmbedder) -> bool:
    """Whether a whole-image box reproduces ``encode_image`` exactly (CNN towers, one pass)."""
    return (
        embedder.mode == "one_pass"
        and isinstance(embedder.tower, (ModifiedResNet, CNNImageTower))
        and embedder.sampling_ratio in (-1, 1)
    )


def _embed_batch(
    model: nn.Module,
    preprocess: RadiographPreprocess,
    embedder: RegionEmbedder,
    batch: dict[str, Any],
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, np.ndarray]:
    """One batch -> the arrays of its shard (see :func:`embed_dataset`)."""
    images = batch["image"].to(device)
    height, width = images.shape[-2:]
    x = preprocess(images)
    side = x.shape[-1]
    boxes = [preprocess.scale_boxes(b.to(device), height, width) for b in batch["regions"]]
    counts = [b.shape[0] for b in boxes]
    with autocast:
        if _image_from_regions(embedder):
            whole = torch.tensor([[0.0, 0.0, float(side), float(x.shape[-2])]], device=device)
            out = embedder(x, [torch.cat([whole, b]) for b in boxes])
            image_emb = torch.stack([o[0] for o in out])
            region_emb = [o[1:] for o in out]
        else:
            image_emb = model.encode_image(x)
            region_emb = embedder(x, boxes)
    image_emb = F.normalize(image_emb.float(), dim=-1)
    dim = image_emb.shape[1]
    regions = torch.cat(region_emb).float() if sum(counts) else image_emb.new_zeros((0, dim))
    return {
        "keys": np.asarray(batch["key"], dtype=str),
        "labels": batch["label"].numpy().astype(np.int64),
        "image_embeddings": image_emb.cpu().numpy().astype(np.float32),
        "region_embeddings": F.normalize(regions, dim=-1).cpu().numpy().astype(np.float32),
        "region_boxes": (torch.cat(boxes) if sum(counts) else regions.new_zeros((0, 4))).float().cpu().numpy(),
        "region_counts": np.asarray(counts, dtype=np.int64),
    }


@dataclass(frozen=True)
class _Plan:
    """What an embedding call works through: the embedder, the batches and where their shards live."""

    embedder: RegionEmbedder
    keys: list[str]
    batches: list[list[int]]  #: row indices of each batch
    device: torch.device
    precision: str  #: resolved: "fp32" or "bf16"
    folder: Path | None  #: cache_dir/<fingerprint>, None without a cache
    digest: str  #: the fingerprint ("" without a cache)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _plan(
    model: nn.Module, preprocess: RadiographPreprocess, dataset, *, mode: str, batch_size: int,
    device: str | torch.device, cache_dir: str | Path | None, precision: str, fingerprint: str | None,
    embedder_options: Mapping[str, Any] | None,
) -> _Plan:
    """The :class:`_Plan` of a call; with a cache, its folder exists afterwards with ``fingerprint.json``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    options = dict(embedder_options or {})
    embedder = RegionEmbedder(model, mode=mode, **options)  # type: ignore[arg-type]
    keys = _dataset_keys(dataset)
    n = len(keys)
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    folder: Path | None = None
    digest = ""
    if cache_dir is not None:
        digest, parts = embedding_fingerprint(
            model, preprocess, dataset, mode=mode, embedder_options=options, batch_size=batch_size,
            precision=resolved, fingerprint=fingerprint, keys=keys,
        )
        folder = Path(cache_dir) / digest
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "fingerprint.json").is_file():
            with atomic_path(folder / "fingerprint.json") as tmp:  # a unique temporary name: processes may race
                tmp.write_text(json.dumps(parts, indent=2, sort_keys=True, default=str) + "\n")
    return _Plan(embedder, keys, batches, device, resolved, folder, digest)


def embed_dataset(
    model: nn.Module,
    preprocess: RadiographPreprocess,
    dataset,
    *,
    mode: str = "one_pass",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
    fingerprint: str | None = None,
    embedder_options: Mapping[str, Any] | None = None,
) -> EmbeddingSet:
    """Embeds every image of ``dataset`` and its candidate regions (see the module docstring).

    Args:
        model: an open_clip ``CLIP`` or :class:`~ravl_med.models.hybrid.HybridCLIP`; it is moved to
            ``device`` and put in eval mode for the call (its train/eval mode is restored after).
        preprocess: the backbone's :class:`RadiographPreprocess`.
        dataset: items with ``image`` (1, S, S) in [0, 1], ``regions`` (R, 4) boxes in pixels of
            that image, ``label`` int and ``key`` str (a
            :class:`~ravl_med.data.dataset.RadiographDataset`). A ``keys`` property (and
            ``ingest_config``, ``labels``) avoids reading the items for the fingerprint.
        mode: region mode, ``"one_pass"`` or ``"crop"`` (:class:`RegionEmbedder`).
        batch_size: images per forward; with a cache, also images per shard.
        device: where the model runs.
        cache_dir: folder for the shard cache; ``None`` computes everything in memory.
        workers: DataLoader worker processes (0: load in this process).
        progress: show a tqdm bar (batches).
        precision: ``"auto"`` (bf16 autocast on CUDA when supported, fp32 otherwise), ``"fp32"``
            or ``"bf16"``.
        fingerprint: identity of the model weights (e.g. the checkpoint's sha256) to use in the
            cache fingerprint instead of hashing the image tower's state dict.
        embedder_options: further :class:`RegionEmbedder` arguments (``vit_pool``, ``vit_norm``,
            ``sampling_ratio``, ``crop_batch_size``).

    Returns:
        the :class:`EmbeddingSet`, images in dataset order; ``labels`` from ``dataset.labels`` when
        the dataset has it (so a class list change needs no recompute), else from the items.
    """
    plan = _plan(model, preprocess, dataset, mode=mode, batch_size=batch_size, device=device, cache_dir=cache_dir,
                 precision=precision, fingerprint=fingerprint, embedder_options=embedder_options)
    every = range(len(plan.batches))
    shards = _read_cache(plan, every)
    missing = [b for b in every if b not in shards]
    if missing:
        _compute_shards(model, preprocess, dataset, plan, missing, len(plan.batches), shards, workers=workers,
                        progress=progress)
    return _assemble(dataset, plan.keys, [shards[b] for b in every], plan.embedder, plan.digest)


def embed_share(
    model: nn.Module,
    preprocess: RadiographPreprocess,
    dataset,
    *,
    rank: int,
    world_size: int,
    cache_dir: str | Path,
    mode: str = "one_pass",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
    precision: str = "auto",
    fingerprint: str | None = None,
    embedder_options: Mapping[str, Any] | None = None,
) -> int:
    """Embeds one process's share of the batches into the cache (see the module docstring).

    Batch ``b`` (rows ``[b * batch_size, (b + 1) * batch_size)``) is this process's when
    ``b % world_size == rank``; those whose shard is not in the cache yet are computed and written,
    nothing is kept in memory. No process group is needed here: the caller waits for every process
    (``torch.distributed.barrier()``) and then reads the set with :func:`embed_dataset` and the same
    arguments.

    Args:
        rank, world_size: this process's rank and the number of processes (``0 <= rank < world_size``).
        cache_dir: the cache folder every process writes to and the reading process reads.
        model, preprocess, dataset, mode, batch_size, device, workers, progress, precision,
            fingerprint, embedder_options: as for :func:`embed_dataset`.

    Returns:
        the number of batches this call computed (0 when the cache already held its share).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    plan = _plan(model, preprocess, dataset, mode=mode, batch_size=batch_size, device=device, cache_dir=cache_dir,
                 precision=precision, fingerprint=fingerprint, embedder_options=embedder_options)
    mine = range(rank, len(plan.batches), world_size)
    missing = [b for b in mine if _read_shard(_shard_path(plan.folder, b), _batch_keys(plan, b)) is None]
    if missing:
        _compute_shards(model, preprocess, dataset, plan, missing, len(mine), None, workers=workers,
                        progress=progress)
    return len(missing)


def _batch_keys(plan: _Plan, b: int) -> list[str]:
    return [plan.keys[i] for i in plan.batches[b]]


def _read_cache(plan: _Plan, batches: Iterable[int]) -> dict[int, dict[str, np.ndarray]]:
    """Batch index -> shard arrays of the valid shards of ``batches`` in the cache (none without a cache)."""
    if plan.folder is None:
        return {}
    shards = {}
    for b in batches:
        shard = _read_shard(_shard_path(plan.folder, b), _batch_keys(plan, b))
        if shard is not None:
            shards[b] = shard
    return shards


def _compute_shards(
    model: nn.Module, preprocess: RadiographPreprocess, dataset, plan: _Plan, missing: list[int], total: int,
    shards: dict[int, dict[str, np.ndarray]] | None, *, workers: int, progress: bool,
) -> None:
    """Embeds the ``missing`` batches (indices into ``plan.batches``) into the cache folder and ``shards``.

    Args:
        total: batches the progress bar counts (of which ``total - len(missing)`` are done already).
        shards: where to keep the computed shards in memory; ``None`` keeps none (the cache has them).

    The model runs on ``plan.device`` in eval mode; its train/eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415 - only needed when there is work to do

    loader = DataLoader(
        dataset, batch_sampler=[plan.batches[b] for b in missing], collate_fn=_collate, num_workers=workers,
    )
    was_training = model.training
    model.to(plan.device).eval()
    preprocess.to(plan.device)
    bar = tqdm(total=total, initial=total - len(missing), unit="batch", desc="embed", disable=not progress)
    try:
        with torch.inference_mode():
            for b, batch in zip(missing, loader, strict=True):
                if batch["key"] != _batch_keys(plan, b):
                    raise RuntimeError(f"batch {b}: the dataset's item keys differ from its keys list")
                shard = _embed_batch(model, preprocess, plan.embedder, batch, plan.device, plan.autocast())
                if plan.folder is not None:
                    _write_shard(_shard_path(plan.folder, b), shard)
                if shards is not None:
                    shards[b] = shard
                bar.update()
    finally:
        bar.close()
        model.train(was_training)


def _assemble(
    dataset, keys: list[str], ordered: list[dict[str, np.ndarray]], embedder: RegionEmbedder, digest: str
) -> EmbeddingSet:
    """The :class:`EmbeddingSet` of the shards in batch order (labels from ``dataset.labels`` when it has them)."""
    counts = np.concatenate([s["region_counts"] for s in ordered]) if ordered else np.zeros(0, np.int64)
    dim = ordered[0]["image_embeddings"].shape[1] if ordered else int(getattr(embedder.tower, "output_dim", 0))
    labels = getattr(dataset, "labels", None)
    labels = (
        np.asarray(labels, dtype=np.int64)
        if labels is not None and not callable(labels)
        else np.concatenate([s["labels"] for s in ordered]) if ordered else np.zeros(0, np.int64)
    )

    def stack(name: str, width: int) -> np.ndarray:
        parts = [s[name] for s in ordered]
        return np.concatenate(parts).reshape(-1, width) if parts else np.zeros((0, width), np.float32)

    return EmbeddingSet(
        keys=np.asarray(keys, dtype=str),
        image_embeddings=stack("image_embeddings", dim),
        region_embeddings=stack("region_embeddings", dim),
        region_image=np.repeat(np.arange(len(keys), dtype=np.int64), counts),
        region_boxes=stack("region_boxes", 4),
        labels=labels,
        fingerprint=digest,
    )
