"""Geometry values that travel with arrays: immutable, JSON-serialisable, no I/O.

Axis order for volumes is the NIfTI array order ``(i, j, k)`` as stored on disk;
we never reorient, so a mask lands on exactly the voxels of its scan.
``VolumeGeometry`` keeps the raw NIfTI header fields that define space
(quaternion, srows, codes, pixdim, units) so a written mask has a bit-identical
geometry, not one recomputed through float64 matrices.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: NIfTI ``xyzt_units & 7`` code -> size of one unit in millimetres.
_SPATIAL_UNIT_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeGeometry:
    """Where the voxels of a NIfTI volume sit in scanner space.

    Attributes
    ----------
    shape : spatial shape (3 ints), NIfTI array order.
    affine : the 4x4 voxel-to-world (RAS+, mm) matrix nibabel reports, row-major.
    zooms : voxel size per axis, in ``spatial_unit``.
    qform_code, sform_code : NIfTI codes (0 = unknown, 1 = scanner, 2 = aligned ...).
    quatern, qoffset, qfac : raw qform parameters (float32 values as stored).
    srow : raw sform rows (3 x 4, float32 values as stored).
    xyzt_units : raw NIfTI units byte.
    nifti_version : 1 or 2; masks are written in the same version.
    """

    shape: tuple[int, ...]
    affine: tuple[float, ...]
    zooms: tuple[float, ...]
    qform_code: int = 0
    sform_code: int = 0
    quatern: tuple[float, ...] = (0.0, 0.0, 0.0)
    qoffset: tuple[float, ...] = (0.0, 0.0, 0.0)
    qfac: float = 1.0
    srow: tuple[float, ...] = (1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0)
    xyzt_units: int = 2
    nifti_version: int = 1

    @property
    def affine_matrix(self) -> np.ndarray:
        """The affine as a float64 (4, 4) array."""
        return np.asarray(self.affine, dtype=np.float64).reshape(4, 4)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (unknown units are taken as mm)."""
        unit_mm = _SPATIAL_UNIT_MM.get(self.xyzt_units & 7, 1.0)
        return math.prod(z * unit_mm for z in self.zooms[:3]) / 1000.0

    def same_grid(self, other: VolumeGeometry, *, atol: float = 1e-4) -> bool:
        """True when both volumes have the same shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine_matrix, other.affine_matrix, atol=atol, rtol=0)
        )

    def to_attrs(self) -> dict[str, Any]:
        """Plain JSON for Zarr attributes."""
        return {"kind": "volume", **dataclasses.asdict(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> VolumeGeometry:
        """Inverse of :meth:`to_attrs`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items() if k in fields}
        return cls(**values)

    @classmethod
    def from_header(cls, header: Any, shape: tuple[int, ...], affine: np.ndarray) -> VolumeGeometry:
        """Capture the spatial fields of a nibabel NIfTI-1/2 header."""
        version = 2 if header.__class__.__name__.startswith("Nifti2") else 1
        return cls(
            shape=tuple(int(s) for s in shape),
            affine=_floats(affine),
            zooms=_floats(header.get_zooms()[: len(shape)]),
            qform_code=int(header["qform_code"]),
            sform_code=int(header["sform_code"]),
            quatern=_floats([header["quatern_b"], header["quatern_c"], header["quatern_d"]]),
            qoffset=_floats([header["qoffset_x"], header["qoffset_y"], header["qoffset_z"]]),
            qfac=float(header["pixdim"][0]),
            srow=_floats([header["srow_x"], header["srow_y"], header["srow_z"]]),
            xyzt_units=int(header["xyzt_units"]),
            nifti_version=version,
        )

    def apply_to_header(self, header: Any) -> None:
        """Write these spatial fields into a nibabel header, bit for bit."""
        header.set_data_shape(self.shape)
        pixdim = np.array(header["pixdim"], dtype=np.float64)
        pixdim[0] = self.qfac
        pixdim[1 : 1 + len(self.zooms)] = self.zooms
        header["pixdim"] = pixdim
        header["qform_code"] = self.qform_code
        header["sform_code"] = self.sform_code
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = self.quatern
        header["qoffset_x"], header["qoffset_y"], header["qoffset_z"] = self.qoffset
        srow = np.asarray(self.srow).reshape(3, 4)
        header["srow_x"], header["srow_y"], header["srow_z"] = srow[0], srow[1], srow[2]
        header["xyzt_units"] = self.xyzt_units
