"""The dataset layouts by name (:data:`RECIPES`) and :func:`build_manifest`, the command line's entry point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ravl_med.data.errors import IngestError
from ravl_med.data.recipes._common import RecipeResult
from ravl_med.data.recipes.csv_layouts import build_chexpert, build_mimic, build_nih, build_padchest
from ravl_med.data.recipes.dicom_layouts import build_dicom_folder, build_siim

__all__ = ["RECIPES", "Recipe", "build_manifest"]


@dataclass(frozen=True)
class Recipe:
    """One dataset layout.

    Attributes:
        name: the layout name on the command line.
        title: the dataset's name.
        builder: the function that builds its manifest.
        expects: the files it reads, in one line, for ``--help``.
        options: keyword arguments of ``builder`` the command line may pass (besides ``root``).
    """

    name: str
    title: str
    builder: Callable[..., RecipeResult]
    expects: str
    options: frozenset[str]


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "nih", "NIH ChestX-ray14", build_nih,
            "ROOT with the PNGs (images/, images_0XX/images/ or flat); --labels Data_Entry_2017_v2020.csv "
            "(default: in ROOT, else torchxrayvision's copy); train_val_list.txt/test_list.txt in ROOT give the split",
            frozenset({"labels", "site"}),
        ),
        Recipe(
            "chexpert", "CheXpert", build_chexpert,
            "ROOT = CheXpert-v1.0[-small]/ (or its parent); --labels train.csv/valid.csv, repeatable "
            "(default: both in ROOT); the file name gives the split",
            frozenset({"labels", "site"}),
        ),
        Recipe(
            "mimic", "MIMIC-CXR-JPG", build_mimic,
            "ROOT = mimic-cxr-jpg/2.0.0/ with files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg; --labels "
            "mimic-cxr-2.0.0-chexpert.csv.gz, --meta mimic-cxr-2.0.0-metadata.csv.gz, --splits "
            "mimic-cxr-2.0.0-split.csv.gz (defaults: in ROOT); reports from files/.../sSTUDY.txt if unpacked",
            frozenset({"labels", "meta", "splits", "reports", "site"}),
        ),
        Recipe(
            "padchest", "PadChest", build_padchest,
            "ROOT with the PNGs (numbered folders 0/ ... 54/, or flat); --labels "
            "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz] (default: in ROOT, else torchxrayvision's copy)",
            frozenset({"labels", "reports", "site"}),
        ),
        Recipe(
            "siim", "SIIM-ACR Pneumothorax", build_siim,
            "ROOT with the DICOMs anywhere below (dicom-images-train/...); --labels train-rle.csv or "
            "stage_2_train.csv (default: in ROOT, else torchxrayvision's copy)",
            frozenset({"labels", "read_headers", "site"}),
        ),
        Recipe(
            "dicom", "plain folder + labels CSV", build_dicom_folder,
            "ROOT with the images; --labels CSV (required) with a file column (path/file/filename/image) and a "
            "label column (label/labels/finding), names set with --path-column/--label-column",
            frozenset({"labels", "path_column", "label_column", "keep_columns", "read_headers", "site"}),
        ),
    )
}


def build_manifest(layout: str, root: str | Path, **options) -> RecipeResult:
    """Builds the manifest of a dataset in one of the :data:`RECIPES` layouts.

    Args:
        layout: a key of :data:`RECIPES`.
        root: the dataset folder.
        **options: keyword arguments of that layout's builder (``labels``, ``meta``, ``relative_to``, ...).

    Raises:
        IngestError: unknown layout, an option the layout does not take, or the builder's own errors.
    """
    if layout not in RECIPES:
        raise IngestError("bad_row", f"unknown dataset layout {layout!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[layout]
    unknown = sorted(set(options) - recipe.options - {"relative_to"})
    if unknown:
        raise IngestError("bad_row", f"the {layout} layout does not take {', '.join(unknown)}")
    return recipe.builder(root, **options)
