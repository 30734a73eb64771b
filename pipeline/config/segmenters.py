"""What each kind of catalog source is segmented with: the library function and its file names."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any


@dataclass(frozen=True, slots=True)
class Segmenter:
    """How one kind of source is segmented: the library function (imported lazily) and its file names."""

    module: str
    function: str
    suffixes: tuple[str, ...]  #: input file endings the source's glob must match, longest first
    output_suffix: str  #: ending of the mask written for each input
    options: frozenset[str] = frozenset()  #: source keys passed on as keyword arguments (bands, vectors)

    def load(self) -> Callable[..., Any]:
        """The segment function, imported on first use."""
        module = importlib.import_module(self.module)
        function: Callable[..., Any] = getattr(module, self.function)
        return function

    def stem(self, name: str) -> str:
        """``scan.nii.gz`` -> ``scan``: the file name without its (double) suffix."""
        for suffix in self.suffixes:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return PurePath(name).stem


#: Source kind -> segmenter. The catalog's ``kind`` choices come from here, so they cannot disagree.
SEGMENTERS: dict[str, Segmenter] = {
    "medical": Segmenter("pipeline.segment.volume", "segment_volume", (".nii.gz", ".nii"), ".nii.gz"),
    "geo": Segmenter("pipeline.segment.raster", "segment_raster", (".tiff", ".tif"), ".tif",
                     frozenset({"bands", "vectors"})),
    # series on a PACS (pipeline.pacs): retrieved, segmented as a DICOM series, SEG stored back
    "dicomweb": Segmenter("pipeline.segment.dicom", "segment_series", (), ".nii.gz", frozenset({"dicomweb"})),
}
