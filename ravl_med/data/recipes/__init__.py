"""Dataset recipes: manifests (see :mod:`ravl_med.data.manifest`) from public chest X-ray datasets on disk.

One builder per layout, grouped by what the layouts share: :mod:`.csv_layouts` (NIH, CheXpert,
MIMIC-CXR-JPG, PadChest: the label CSV carries the subgroup attributes) and :mod:`.dicom_layouts`
(SIIM-ACR and the plain ``dicom`` folder: the DICOM headers do); :mod:`.registry` names them. The
public datasets are parsed with torchxrayvision's own dataset classes (``NIH_Dataset``,
``CheX_Dataset``, ``MIMIC_Dataset``, ``PC_Dataset``, ``SIIM_Pneumothorax_Dataset``), so labels mean
here what they mean there: a class is positive where the class's ``labels`` matrix holds 1; 0 and
NaN (negative, uncertain, not mentioned) are not positive, and a row with no positive class is
labelled ``No Finding``. Class names are torchxrayvision's (``Effusion``, ``Pleural_Thickening``,
...). The ``dicom`` layout is a plain folder of images plus a labels CSV.

Every builder returns a :class:`RecipeResult`: the manifest table (``path``, ``label``, ``report``,
``split`` where the dataset defines one, and the subgroup attributes ``view_position``, ``sex``,
``age_band``, ``site``, ``device`` where the dataset provides them) plus the count of dropped rows
per reason. Rows whose image is not on disk are dropped, counted and a few are kept as examples.
Patient and study identifiers are never copied into the table (file paths of some releases do embed
them; the manifest's ``key`` is a hash of the path for that reason).

Unusable input (missing root, label CSV or column) raises :class:`~ravl_med.data.errors.IngestError`
with a message that names the file or column, never a bare ``KeyError`` from deep in pandas.
"""

from ravl_med.data.recipes._common import DROP_REASONS, NO_FINDING, RecipeResult, age_band
from ravl_med.data.recipes.csv_layouts import build_chexpert, build_mimic, build_nih, build_padchest
from ravl_med.data.recipes.dicom_layouts import build_dicom_folder, build_siim
from ravl_med.data.recipes.registry import RECIPES, Recipe, build_manifest

__all__ = [
    "DROP_REASONS",
    "NO_FINDING",
    "RECIPES",
    "Recipe",
    "RecipeResult",
    "age_band",
    "build_chexpert",
    "build_dicom_folder",
    "build_manifest",
    "build_mimic",
    "build_nih",
    "build_padchest",
    "build_siim",
]
