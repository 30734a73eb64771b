"""Window alignment: show the network each window the way it was trained, answer on the scan's grid.

A 3D network learns one axis order and direction (a CT model trained on RAS volumes sees the liver
on the left of axis 0) and one voxel size. Scans arrive in any order (LPS from DICOM converters,
sagittal acquisitions stored S-L-P, oblique ones) and at any resolution. Instead of reorienting and
resampling the whole volume (nnU-Net, TotalSegmentator: a full copy in memory), every window cut
from the scan's own grid is permuted, flipped and resized to the card's ``orientation`` and
``spacing`` just before the network, and its output is mapped back just after. The work store,
the block grid, the stitching and the written mask all stay on the scan's voxels, so the mask keeps
the scan's exact geometry; a window in scan voxels covers the physical extent of the card's roi.

Rasters have no orientation to fix (rows and columns are the map's), but a 2D card's ``spacing``
(metres per pixel, rows then columns) sizes the windows the same way, so a 0.5 m buildings model
sees 0.5 m pixels on 0.3 m or 1 m imagery; degrees are converted at the scene's latitude.

Pure functions over torch tensors and NumPy affines; the predictor applies them per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError

#: Voxel sizes within this relative difference of the card's are used as they are (no resampling),
#: so a scan at the training resolution is segmented exactly as in training.
SPACING_TOLERANCE = 0.05
#: A scan more than this many times finer or coarser than the model's spacing is refused: the
#: network would see structures 8x off the scale it learned (a 0.5 m buildings model on 30 m Landsat).
MAX_SCALE = 8.0


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

    def _flipped(self, x: Any) -> Any:
        """Reverse the model axes that run against their scan axes (its own inverse)."""
        dims = [2 + m for m, f in enumerate(self.flip) if f]
        return x.flip(dims) if dims else x

    def to_model(self, windows: Any) -> Any:
        """(B, C, *roi_scan) windows -> (B, C, *roi_model) network input."""
        out = self._flipped(windows.permute(0, 1, *(2 + p for p in self.perm)))
        return _resize(out, self.roi_model) if self.resamples else out

    def to_scan(self, outputs: Any) -> Any:
        """(B, K, *roi_model) network output -> (B, K, *roi_scan), the inverse of :meth:`to_model`."""
        out = _resize(outputs, tuple(self.roi_scan[p] for p in self.perm)) if self.resamples else outputs
        inverse = sorted(range(len(self.perm)), key=self.perm.__getitem__)  # scan axis s is model axis inverse[s]
        return self._flipped(out).permute(0, 1, *(2 + m for m in inverse))


    def to_model_array(self, windows: np.ndarray) -> np.ndarray:
        """:meth:`to_model` on NumPy, for alignments that do not resample (permute and flip are exact anywhere)."""
        assert not self.resamples, "resampling windows runs through torch (to_model)"
        out = np.transpose(windows, (0, 1, *(2 + p for p in self.perm)))
        return np.flip(out, tuple(2 + m for m, f in enumerate(self.flip) if f)) if any(self.flip) else out

    def to_scan_array(self, outputs: np.ndarray) -> np.ndarray:
        """:meth:`to_scan` on NumPy (see :meth:`to_model_array`)."""
        assert not self.resamples, "resampling windows runs through torch (to_scan)"
        flipped = np.flip(outputs, tuple(2 + m for m, f in enumerate(self.flip) if f)) if any(self.flip) else outputs
        inverse = sorted(range(len(self.perm)), key=self.perm.__getitem__)
        return np.transpose(flipped, (0, 1, *(2 + m for m in inverse)))


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

    n = len(roi_model)
    perm, flip = tuple(range(n)), (False,) * n
    if orientation is not None:
        transform = ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), axcodes2ornt(orientation))
        by_model = {int(target): (int(scan_axis), bool(direction < 0))
                    for scan_axis, (target, direction) in enumerate(transform)}
        perm = tuple(by_model[m][0] for m in range(n))
        flip = tuple(by_model[m][1] for m in range(n))
    return _scaled(perm, flip, roi_model, voxel_sizes(affine), spacing)


def _scaled(perm: tuple[int, ...], flip: tuple[bool, ...], roi_model: Sequence[int],
            sizes: Sequence[float] | np.ndarray, spacing: Sequence[float] | None) -> WindowAlignment:
    """The window in scan voxels covering ``roi_model`` at ``spacing``, for scan voxel ``sizes`` (scan axes)."""
    roi_model = tuple(int(r) for r in roi_model)
    roi_scan = [0] * len(roi_model)
    for m, scan_axis in enumerate(perm):
        if spacing is None:
            ratio = 1.0
        else:
            ratio = float(spacing[m]) / float(sizes[scan_axis])
            if not 1 / MAX_SCALE <= ratio <= MAX_SCALE:
                raise InputError(f"grid spacing {sizes[scan_axis]:.4g} along axis {scan_axis} is {1 / ratio:.3g}x "
                                 f"the model's {spacing[m]:.4g} (mm for scans, metres for rasters); too far off the "
                                 f"scale it was trained at (limit {MAX_SCALE:g}x)")
        keep = abs(ratio - 1.0) <= SPACING_TOLERANCE
        roi_scan[scan_axis] = roi_model[m] if keep else max(1, round(roi_model[m] * ratio))
    return WindowAlignment(perm=perm, flip=flip, roi_model=roi_model, roi_scan=tuple(roi_scan))


def alignment_for(geometry_attrs: dict[str, Any] | None, card: Any) -> WindowAlignment | None:
    """The alignment for an image (its geometry's ``to_attrs()``) and a model card; None when there is
    nothing to align: the card states neither orientation nor spacing, the image already matches them,
    or it is a raster without a CRS (its pixels have no ground size).

    Raises InputError (without the file name: callers add it) when the image is far off the card's scale.
    """
    if not geometry_attrs or (card.orientation is None and card.spacing is None):
        return None
    if geometry_attrs.get("kind") == "raster":
        from pipeline.geometry import RasterGeometry, pixel_size_m

        sizes = pixel_size_m(RasterGeometry.from_attrs(geometry_attrs))
        if sizes is None or card.spacing is None:
            return None
        alignment = _scaled((0, 1), (False, False), card.roi_size, sizes, card.spacing)
    else:
        affine = np.asarray(geometry_attrs["affine"], dtype=np.float64).reshape(4, 4)
        alignment = window_alignment(affine, card.roi_size, orientation=card.orientation, spacing=card.spacing)
    return None if alignment.is_identity else alignment
