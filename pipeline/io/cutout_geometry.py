"""Pure geometry of ``--cutout``: the labels' bounding box, the margin in voxels, the crop's exact placement.

A crop starting at voxel/pixel ``lo`` is the same grid moved by ``lo``: a NIfTI affine becomes
``A @ translate(lo)`` (the qform and sform offsets move by their own matrices times ``lo``, their
rotation and zoom terms are copied as stored), a GeoTIFF transform ``(a, b, c, d, e, f)`` gets
``c + a*col + b*row`` and ``f + d*col + e*row``. So the cutout opens over the original in a viewer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.geometry import _SPATIAL_UNIT_MM, VolumeGeometry

Box = tuple[tuple[int, ...], tuple[int, ...]]  #: (lo inclusive, hi exclusive) per spatial axis


def block_box(labels: np.ndarray, kept: Iterable[int], offset: Sequence[int],
              valid: np.ndarray | None = None) -> Box | None:
    """Bounding box of the ``kept`` labels in one block whose first voxel is at ``offset``; None if absent."""
    inside = np.isin(labels, np.asarray(list(kept)))
    if valid is not None:
        inside &= valid
    if not inside.any():
        return None
    lo, hi = [], []
    for axis in range(inside.ndim):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        lo.append(int(hit[0]) + offset[axis])
        hi.append(int(hit[-1]) + 1 + offset[axis])
    return tuple(lo), tuple(hi)


def union(boxes: Iterable[Box | None]) -> Box | None:
    """The smallest box holding every given box (None: no box)."""
    found = [b for b in boxes if b is not None]
    if not found:
        return None
    return (tuple(min(b[0][a] for b in found) for a in range(len(found[0][0]))),
            tuple(max(b[1][a] for b in found) for a in range(len(found[0][1]))))


def margin_steps(margin: float, spacing: Sequence[float]) -> tuple[int, ...]:
    """A physical margin as whole voxels/pixels per axis, rounded up (the margin is at least ``margin``)."""
    return tuple(math.ceil(margin / s - 1e-9) if s > 0 else 0 for s in spacing)


def grow(box: Box, steps: Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` widened by ``steps`` on each side, clipped to the image."""
    lo = tuple(max(0, a - m) for a, m in zip(box[0], steps, strict=True))
    hi = tuple(min(n, b + m) for b, m, n in zip(box[1], steps, shape, strict=True))
    return lo, hi


def volume_spacing_mm(geometry: VolumeGeometry) -> tuple[float, ...]:
    """Voxel size per axis in mm (unknown units are taken as mm, as for volumes in ml)."""
    unit = _SPATIAL_UNIT_MM.get(geometry.xyzt_units & 7, 1.0)
    return tuple(z * unit for z in geometry.zooms[:3])


def shifted_volume(geometry: VolumeGeometry, box: Box) -> VolumeGeometry:
    """The geometry of the crop ``box``: same rotation and zooms, origin moved to voxel ``box[0]``."""
    import nibabel as nib

    lo = np.asarray(box[0], dtype=np.float64)
    header = (nib.Nifti2Header if geometry.nifti_version == 2 else nib.Nifti1Header)()
    geometry.apply_to_header(header)
    qform = header.get_qform()  # from the stored quaternion, offsets and pixdim
    srow = np.asarray(geometry.srow, dtype=np.float64).reshape(3, 4).copy()
    srow[:, 3] += srow[:, :3] @ lo
    shift = np.eye(4)
    shift[:3, 3] = lo
    return dataclasses.replace(
        geometry, shape=tuple(int(b - a) for a, b in zip(*box, strict=True)),
        affine=tuple(float(v) for v in (geometry.affine_matrix @ shift).ravel()),
        qoffset=tuple(float(v) for v in qform[:3, :3] @ lo + qform[:3, 3]),
        srow=tuple(float(v) for v in srow.ravel()))


def shifted_transform(transform: Sequence[float], row: int, col: int) -> tuple[float, ...]:
    """A raster transform ``(a, b, c, d, e, f)`` moved to pixel (``row``, ``col``)."""
    a, b, c, d, e, f = (float(t) for t in transform)
    return (a, b, c + a * col + b * row, d, e, f + d * col + e * row)
