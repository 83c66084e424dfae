"""Chest radiograph transforms, MONAI style: each array transform has a dictionary twin (``d``)."""

from ravl_med.data.transforms.base import ArrayTransformd
from ravl_med.data.transforms.intensity import (
    CollapseGreyChannels,
    CollapseGreyChannelsd,
    InvertMonochrome1,
    InvertMonochrome1d,
    RadiographQC,
    RadiographQCd,
    VOIWindow,
    VOIWindowd,
    window_to_unit,
)
from ravl_med.data.transforms.io import LoadRadiograph, LoadRadiographd
from ravl_med.data.transforms.regions import (
    REGION_FAMILIES,
    CropRegions,
    CropRegionsd,
    RegionGrid,
    RegionGridd,
    RegionProposals,
    RegionProposalsd,
    content_bounds,
    propose_regions,
    region_grid,
)
from ravl_med.data.transforms.spatial import (
    DisplayFlip,
    Letterbox,
    Letterboxd,
    RadiologicalOrientation,
    RadiologicalOrientationd,
    display_flip_from_orientation,
)

__all__ = [
    "REGION_FAMILIES",
    "ArrayTransformd",
    "CollapseGreyChannels",
    "CollapseGreyChannelsd",
    "CropRegions",
    "CropRegionsd",
    "DisplayFlip",
    "InvertMonochrome1",
    "InvertMonochrome1d",
    "Letterbox",
    "Letterboxd",
    "LoadRadiograph",
    "LoadRadiographd",
    "RadiographQC",
    "RadiographQCd",
    "RadiologicalOrientation",
    "RadiologicalOrientationd",
    "RegionGrid",
    "RegionGridd",
    "RegionProposals",
    "RegionProposalsd",
    "VOIWindow",
    "VOIWindowd",
    "content_bounds",
    "display_flip_from_orientation",
    "propose_regions",
    "region_grid",
    "window_to_unit",
]
