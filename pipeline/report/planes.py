"""The three planes of a volume as the report shows them: radiological convention, from the affine's closest axes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ViewSpec:
    """One of the three planes: which world (RAS) axis is its normal, which ones go down and right.

    ``down``/``right`` are (world axis, sign): sign -1 means the screen coordinate grows as the world
    coordinate falls (e.g. anterior at the top, patient right on the left).
    """

    name: str
    normal: int
    down: tuple[int, int]
    right: tuple[int, int]


#: Radiological convention (as ITK-SNAP and 3D Slicer show them).
VIEWS = (
    ViewSpec("axial", normal=2, down=(1, -1), right=(0, -1)),
    ViewSpec("coronal", normal=1, down=(2, -1), right=(0, -1)),
    ViewSpec("sagittal", normal=0, down=(2, -1), right=(1, -1)),
)


_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # (low end, high end) of RAS axes


@dataclass(frozen=True)
class PlaneMap:
    """How to cut one view out of an (i, j, k) volume and turn it to screen order."""

    view: ViewSpec
    axis: int  #: the voxel axis that is the plane's normal
    rows: int  #: voxel axis shown top to bottom
    cols: int
    flip_rows: bool
    flip_cols: bool

    def sides(self) -> dict[str, str]:
        """The anatomical letter at each edge of the displayed image."""
        (dr, sr), (dc, sc) = self.view.down, self.view.right
        top, bottom = (_LETTERS[dr][1], _LETTERS[dr][0]) if sr < 0 else _LETTERS[dr]
        left, right = (_LETTERS[dc][1], _LETTERS[dc][0]) if sc < 0 else _LETTERS[dc]
        return {"top": top, "bottom": bottom, "left": left, "right": right}

    def index(self, position: int) -> tuple[Any, ...]:
        key: list[Any] = [slice(None)] * 3
        key[self.axis] = position
        return tuple(key)

    def orient(self, plane: np.ndarray) -> np.ndarray:
        """A plane read with :meth:`index` (remaining axes in voxel order) -> screen order."""
        if self.rows > self.cols:
            plane = plane.T
        if self.flip_rows:
            plane = plane[::-1]
        if self.flip_cols:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)


def plane_maps(affine: np.ndarray) -> list[PlaneMap]:
    """The three :class:`PlaneMap` of a volume, from its affine's closest RAS axes."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    voxel_of = {int(world): (voxel, int(sign)) for voxel, (world, sign) in enumerate(ornt)}
    maps = []
    for view in VIEWS:
        (rows, row_sign), (cols, col_sign) = voxel_of[view.down[0]], voxel_of[view.right[0]]
        maps.append(PlaneMap(view, axis=voxel_of[view.normal][0], rows=rows, cols=cols,
                             flip_rows=row_sign != view.down[1], flip_cols=col_sign != view.right[1]))
    return maps
