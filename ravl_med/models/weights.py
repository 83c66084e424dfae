"""Offline weight loading: local files or folders only, optional sha256 check, never a network call.

A path is a filesystem path or ``package:<module>/<relative path>`` for a file shipped inside an
installed Python package (:func:`resolve_local_path`, found without importing it, never downloaded).

Checkpoints are plain state dicts (or dicts holding one under ``state_dict``/``model``/``module``)
stored as ``.pt``/``.pth``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors``.
Prefixes that wrappers add (``module.`` from DataParallel/DDP, ``model.`` from Lightning-style
trainers) are stripped. Pickled whole models and TorchScript archives (OpenAI's original CLIP files)
are refused (unpickling can run code; TorchScript is not a state dict), the latter with how to convert one once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ravl_med.data.atomic import atomic_path

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "PACKAGE_SCHEME",
    "ChecksumError",
    "KeyReport",
    "WeightsError",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict",
    "resolve_checkpoint",
    "resolve_local_path",
    "save_checkpoint",
]

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
#: File names looked for, in order, when a checkpoint folder is given.
FOLDER_CANDIDATES = (
    "open_clip_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "model.pt",
    "checkpoint.pt",
    "model.pth",
)
STRIP_PREFIXES = ("module.", "model.")
#: Prefix of a path inside an installed Python package: ``package:<module>/<relative path>``.
PACKAGE_SCHEME = "package:"
_WRAPPER_KEYS = ("state_dict", "model", "module")


class WeightsError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, ambiguous, or not matching the model."""


class ChecksumError(WeightsError):
    """The file's sha256 differs from the expected one."""


@dataclass
class KeyReport:
    """What loading a state dict into a model left unmatched.

    Attributes:
        missing: model keys absent from the checkpoint.
        unexpected: checkpoint keys the model does not have.
        source: the file the weights came from.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    source: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            head = ", ".join(keys[:8])
            return f"{len(keys)} ({head}{', ...' if len(keys) > 8 else ''})"

        text = f"{self.source}: missing keys {show(self.missing)}; unexpected keys {show(self.unexpected)}"
        if self.missing and self.unexpected:
            # Renamed modules (another project's layout) show in the first name component.
            def heads(keys: list[str]) -> str:
                return ", ".join(sorted({key.split(".")[0] for key in keys}))

            text += f" (unexpected keys start with: {heads(self.unexpected)}; missing ones with: {heads(self.missing)})"
        return text


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_local_path(value: str | Path, what: str = "path") -> Path:
    """A local file or folder from a config value.

    Args:
        value: a filesystem path (``~`` expanded), or ``package:<module>/<relative path>`` for a file
            or folder inside an installed Python package (located without importing it).
        what: what the path is for, used in error messages.

    Raises:
        FileNotFoundError: naming the missing path, or the package that is not installed.
    """
    text = str(value)
    if text.startswith(PACKAGE_SCHEME):
        module, _, relative = text[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            pip_name = module.replace("_", "-")
            raise FileNotFoundError(
                f"{what}: Python package {module!r} is not installed (pip install {pip_name}); needed for {text}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (weights are only loaded from local files)")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file path from a file or folder path.

    Args:
        path: a checkpoint file, or a folder holding one (known names first, else its only
            checkpoint-suffixed file).

    Raises:
        FileNotFoundError: naming the missing path, or the folder without a checkpoint.
        WeightsError: a folder with several candidate files and none of the known names.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (weights are only loaded from local files)")
    if path.is_file():
        return path
    for name in FOLDER_CANDIDATES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) in folder {path}")
    if len(found) > 1:
        raise WeightsError(f"several checkpoint files in {path}: {[p.name for p in found]}; pass one file")
    return found[0]


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state)
    # Strip a prefix only when every key has it, so a model with a real "model." submodule survives.
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's unpickling errors run to a page)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _is_torchscript(file: Path) -> bool:
    """Whether a file is a ``torch.jit.save`` archive (a zip holding compiled code and ``constants.pkl``)."""
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Reads a state dict from a local checkpoint file or folder, on the CPU.

    Args:
        path: file (``.pt``/``.pth``/``.bin``/``.safetensors``) or folder (see :func:`resolve_checkpoint`).
        sha256: expected hex digest of the file; checked before the file is parsed.

    Raises:
        FileNotFoundError: the path (or a checkpoint in the folder) does not exist.
        ChecksumError: the digest differs (the message shows expected and actual).
        WeightsError: the file is not a state dict in a known format.
    """
    file = resolve_checkpoint(path)
    if sha256 is not None:
        actual = file_sha256(file)
        if actual.lower() != sha256.strip().lower():
            raise ChecksumError(f"sha256 mismatch for {file}: expected {sha256.strip().lower()}, got {actual}")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file), device="cpu")
        except SafetensorError as error:  # garbage, a cut file, a damaged header
            raise WeightsError(f"{file}: not a valid safetensors/torch checkpoint ({_first_line(error)})") from error
    elif _is_torchscript(file):
        raise WeightsError(
            f"{file}: a TorchScript archive, not a state dict; convert it once (trusted source only) with "
            "torch.save(torch.jit.load(f, map_location='cpu').state_dict(), 'model.pt')"
        )
    elif file.suffix in CHECKPOINT_SUFFIXES:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # pickles with code objects, corrupt files
            raise WeightsError(f"{file}: not a valid safetensors/torch checkpoint ({_first_line(error)})") from error
    else:
        raise WeightsError(f"unknown checkpoint format {file.suffix!r} for {file}; use one of {CHECKPOINT_SUFFIXES}")
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{file} does not hold a state dict of tensors")
    return _strip_prefixes(state)


def load_checkpoint(
    model: nn.Module, path: str | Path, sha256: str | None = None, strict: bool = True
) -> KeyReport:
    """Loads local weights into ``model`` in place.

    Args:
        model: the module to fill.
        path: checkpoint file or folder.
        sha256: expected hex digest of the file, or ``None`` to skip the check.
        strict: raise when keys are missing or unexpected (the message lists them); when ``False``
            load what matches and return the report.

    Returns:
        the :class:`KeyReport` (empty lists when everything matched).

    Raises:
        FileNotFoundError, ChecksumError, WeightsError: see :func:`load_state_dict`; WeightsError
        also for key or shape mismatches under ``strict``.
    """
    file = resolve_checkpoint(path)
    state = load_state_dict(file, sha256=sha256)
    own = model.state_dict()
    shape_errors = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    if shape_errors:
        raise WeightsError(f"{file}: shape mismatch for {len(shape_errors)} tensors: " + "; ".join(shape_errors[:8]))
    report = KeyReport(
        missing=sorted(set(own) - set(state)), unexpected=sorted(set(state) - set(own)), source=file
    )
    if strict and not report.ok:
        raise WeightsError(str(report))
    model.load_state_dict(state, strict=False)
    return report


def save_checkpoint(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | Path) -> str:
    """Writes a state dict atomically (temporary file, then rename) and returns its sha256.

    The format follows the suffix: ``.safetensors`` via safetensors, otherwise ``torch.save``.

    Args:
        model_or_state: a module (its ``state_dict()``) or a state dict.
        path: destination file.

    Returns:
        hex sha256 of the written file, for :func:`load_checkpoint`'s ``sha256``.
    """
    path = Path(path)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise WeightsError(f"unknown checkpoint format {path.suffix!r} for {path}; use one of {CHECKPOINT_SUFFIXES}")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            # safetensors refuses tensors sharing storage; clone breaks any sharing.
            save_file({key: value.clone() for key, value in state.items()}, str(tmp))
        else:
            torch.save(state, tmp)
    return file_sha256(path)
