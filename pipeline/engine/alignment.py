"""Window alignment: show the network each window the way it was trained, answer on the scan's grid.

A 3D network learns one axis order and direction (a CT model trained on RAS volumes sees the liver
on the left of axis 0) and one voxel size. Scans arrive in any order (LPS from DICOM converters,
sagittal acquisitions stored S-L-P, oblique ones) and at any resolution. Instead of reorienting and
resampling the whole volume (nnU-Net, TotalSegmentator: a full copy in memory), every window cut
from the scan's own grid is permuted, flipped and resized to the card's ``orientation`` and
``spacing`` just before the network, and its output is mapped back just after. The work store,
the block grid, the stitching and the written mask all stay on the scan's voxels, so the mask keeps
the scan's exact geometry; a window in scan voxels covers the physical extent of the card's roi.

Pure functions over torch tensors and NumPy affines; the predictor applies them per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Voxel sizes within this relative difference of the card's are used as they are (no resampling),
#: so a scan at the training resolution is segmented exactly as in training.
SPACING_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class WindowAlignment:
    """How a window on the scan's grid becomes the network's input.

    Attributes
    ----------
    perm : model axis ``m`` takes scan axis ``perm[m]``.
    flip : model axis ``m`` runs against its scan axis.
    roi_model : the card's roi (model axes): what the network sees.
    roi_scan : the window in scan voxels (scan axes): the same physical extent on the scan's grid.
    """

    perm: tuple[int, ...]
    flip: tuple[bool, ...]
    roi_model: tuple[int, ...]
    roi_scan: tuple[int, ...]

    @property
    def resamples(self) -> bool:
        return tuple(self.roi_scan[p] for p in self.perm) != self.roi_model

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(len(self.perm))) and not any(self.flip) and not self.resamples

    def to_model(self, windows: Any) -> Any:
        """(B, C, *roi_scan) windows -> (B, C, *roi_model) network input."""
        out = windows.permute(0, 1, *(2 + p for p in self.perm))
        flipped = [2 + m for m, f in enumerate(self.flip) if f]
        if flipped:
            out = out.flip(flipped)
        return _resize(out, self.roi_model) if self.resamples else out

    def to_scan(self, outputs: Any) -> Any:
        """(B, K, *roi_model) network output -> (B, K, *roi_scan) on the scan's grid (inverse of :meth:`to_model`)."""
        out = _resize(outputs, tuple(self.roi_scan[p] for p in self.perm)) if self.resamples else outputs
        flipped = [2 + m for m, f in enumerate(self.flip) if f]
        if flipped:
            out = out.flip(flipped)
        inverse = [0] * len(self.perm)
        for m, p in enumerate(self.perm):
            inverse[p] = m
        return out.permute(0, 1, *(2 + m for m in inverse))


def _resize(x: Any, size: tuple[int, ...]) -> Any:
    """Linear interpolation to ``size``; area averaging when every axis shrinks (no aliasing of fine noise)."""
    import torch.nn.functional as F

    shrinking = all(s <= n for s, n in zip(size, x.shape[2:], strict=True))
    if shrinking:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="trilinear" if len(size) == 3 else "bilinear", align_corners=False)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis, from the affine's columns (mm; also right for oblique grids)."""
    matrix = np.asarray(affine, dtype=np.float64)
    return np.linalg.norm(matrix[:-1, :-1], axis=0)


def window_alignment(affine: np.ndarray, roi_model: Sequence[int], *, orientation: str | None = None,
                     spacing: Sequence[float] | None = None) -> WindowAlignment:
    """The alignment for a scan with ``affine`` and a card trained in ``orientation`` (axis codes such as
    ``"RAS"``) at ``spacing`` (mm per model axis). Either may be None: the card then takes the scan's
    own axis order, or its own voxel size. Oblique scans use their closest axes (nibabel's
    ``io_orientation``), as viewers do."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    roi_model = tuple(int(r) for r in roi_model)
    n = len(roi_model)
    perm, flip = tuple(range(n)), (False,) * n
    if orientation is not None:
        transform = ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), axcodes2ornt(orientation))
        by_model = {int(target): (int(scan_axis), bool(direction < 0)) for scan_axis, (target, direction) in enumerate(transform)}
        perm = tuple(by_model[m][0] for m in range(n))
        flip = tuple(by_model[m][1] for m in range(n))
    roi_scan = [0] * n
    sizes = voxel_sizes(affine)
    for m, scan_axis in enumerate(perm):
        ratio = 1.0 if spacing is None else float(spacing[m]) / float(sizes[scan_axis])
        keep = abs(ratio - 1.0) <= SPACING_TOLERANCE
        roi_scan[scan_axis] = roi_model[m] if keep else max(1, round(roi_model[m] * ratio))
    return WindowAlignment(perm=perm, flip=flip, roi_model=roi_model, roi_scan=tuple(roi_scan))


def alignment_for(geometry_attrs: dict[str, Any] | None, card: Any) -> WindowAlignment | None:
    """The alignment for a work-store image (its ``geometry`` attributes) and a model card; None when
    there is nothing to align (a raster, or a card that states neither orientation nor spacing)."""
    if not geometry_attrs or geometry_attrs.get("kind") != "volume":
        return None
    if getattr(card, "orientation", None) is None and getattr(card, "spacing", None) is None:
        return None
    affine = np.asarray(geometry_attrs["affine"], dtype=np.float64).reshape(4, 4)
    alignment = window_alignment(affine, card.roi_size, orientation=card.orientation, spacing=card.spacing)
    return None if alignment.is_identity else alignment
