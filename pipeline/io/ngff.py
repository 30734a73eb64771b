"""OME-Zarr (NGFF 0.4/0.5) and plain Zarr arrays as segmentation input, read in place (never copied).

Opening validates the store's metadata only (no voxel is read): the multiscale image's axes (names,
types, units, in the order stored), the chosen level's array and its ``coordinateTransformations``
(dataset ``scale``/``translation`` composed with the multiscale-wide ones), the channel axis, the
dtype. Plain Zarr arrays carry none of that, so the caller states it: ``axes="zyx"`` and ``spacing``
in mm. The result, :class:`ZarrInput`, is a value; :func:`zarr_geometry` turns it into the
:class:`~pipeline.geometry.VolumeGeometry` the engine aligns windows with, and
:class:`~pipeline.io.zarr_source.ZarrView` reads spans of it as ``(C, *spatial)``.

Orientation: NGFF carries none. ``orientation`` (axis codes such as ``"SAR"`` for stored ``z, y, x``)
states it; without it the stored axes are taken to be in the model card's orientation, so windows
keep the stored axis order (:func:`zarr_geometry` warns when the card has one).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError, InputNotFoundError
from pipeline.geometry import VolumeGeometry

logger = logging.getLogger(__name__)

#: NGFF space units -> millimetres (the card's spacing unit). Units the spec lists that no scan uses
#: (parsec, mile...) are refused rather than silently scaled.
UNIT_MM = {"angstrom": 1e-7, "nanometer": 1e-6, "micrometer": 1e-3, "millimeter": 1.0, "centimeter": 10.0,
           "decimeter": 100.0, "meter": 1000.0, "inch": 25.4, "foot": 304.8}
AXIS_TYPES = ("space", "channel", "time")
#: ``--axes`` letters for plain arrays -> NGFF axis type.
AXIS_LETTERS = {"z": "space", "y": "space", "x": "space", "c": "channel", "t": "time"}
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
#: RAS+ direction of each anatomical axis code.
CODE_DIRECTION = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True, slots=True)
class Axis:
    """One stored axis: NGFF name, type (space/channel/time) and unit as written (None when absent)."""

    name: str
    type: str
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class ZarrLevel:
    """One pyramid level: its array path, stored shape and spatial scale/translation (mm, stored order)."""

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class ZarrInput:
    """A validated Zarr input (metadata only): ``level`` indexes ``levels``; no ``multiscales`` for plain arrays."""

    url: str  #: local path or fsspec URL of the store (root group, or the plain array's store)
    axes: tuple[Axis, ...]
    levels: tuple[ZarrLevel, ...]
    level: int
    dtype: np.dtype
    chunks: tuple[int, ...]  #: the level array's chunks, stored order
    multiscales: bool
    name: str = "image"

    @property
    def array(self) -> ZarrLevel:
        return self.levels[self.level]

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(self.axes) if a.type == "space")

    @property
    def channel_axis(self) -> int | None:
        return next((i for i, a in enumerate(self.axes) if a.type == "channel"), None)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[i] for i in self.spatial_axes)

    @property
    def channels(self) -> int:
        axis = self.channel_axis
        return 1 if axis is None else int(self.array.shape[axis])

    @property
    def is_local(self) -> bool:
        return "://" not in self.url


def is_zarr_input(path: str | os.PathLike[str]) -> bool:
    """A ``.zarr`` name, a URL, or a directory holding Zarr metadata: segment-volume's Zarr inputs."""
    text = os.fspath(path).rstrip("/")
    if "://" in text or text.lower().endswith(ZARR_SUFFIXES):
        return True
    markers = ("zarr.json", ".zgroup", ".zarray")
    return os.path.isdir(text) and any(os.path.exists(os.path.join(text, m)) for m in markers)


def open_group(url: str, *, read_only: bool = True) -> Any:
    """The Zarr group (or array) at ``url`` (path or fsspec URL), v2 or v3, without reading data."""
    import zarr

    return zarr.open(store=open_store(url, read_only=read_only), mode="r" if read_only else "r+")


def open_store(url: str, *, read_only: bool = True) -> Any:
    """A zarr store for a local path or an fsspec URL (remote stores need their fsspec backend installed)."""
    import zarr

    if "://" in url:
        return zarr.storage.FsspecStore.from_url(url, read_only=read_only)
    return zarr.storage.LocalStore(url, read_only=read_only)


def open_zarr_input(url: str | os.PathLike[str], *, level: int = 0, array: str | None = None,
                    spacing: Sequence[float] | None = None, axes: str | None = None) -> ZarrInput:
    """Open and validate an OME-Zarr image (level ``level``) or, with ``array``/``spacing``/``axes``, a plain array.

    Raises
    ------
    InputNotFoundError, InputError
        Missing store, not Zarr, no ``multiscales``, unknown axis type or unit, missing level,
        a dtype the model cannot take, inconsistent ``--spacing``/``--axes``.
    """
    text = os.fspath(url)
    if "://" not in text and not os.path.exists(text):
        raise InputNotFoundError(f"{text}: Zarr store not found")
    try:
        node = open_group(text)
    except Exception as e:  # zarr raises FileNotFoundError, NodeNotFoundError, JSON errors...
        raise InputError(f"{text}: not a Zarr store ({_reason(e)})") from e
    if array is not None or spacing is not None or axes is not None:
        found = _plain(text, node, array=array, spacing=spacing, axes=axes)
    else:
        found = _multiscale(text, node, level)
    _check_dtype(text, found.dtype)
    return found


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_dtype(url: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputError(f"{url}: voxel type {dtype} is not a real scalar number; the model takes integers or floats")


def ome_attrs(node: Any) -> dict[str, Any]:
    """NGFF attributes of a group: under ``ome`` (0.5, Zarr v3) or at the top (0.4, Zarr v2)."""
    attrs = dict(node.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def _multiscale(url: str, node: Any, level: int) -> ZarrInput:
    import zarr

    if not isinstance(node, zarr.Group):
        raise InputError(f"{url}: is a Zarr array, not an OME-Zarr image; pass --array, --spacing and --axes")
    multiscales = ome_attrs(node).get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise InputError(f"{url}: no 'multiscales' in the group's attributes (not an OME-Zarr image); for a plain "
                         "Zarr array pass --array NAME --spacing a,b,c --axes zyx")
    meta = multiscales[0]
    axes = _parse_axes(url, meta.get("axes"))
    datasets = meta.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise InputError(f"{url}: level {level} does not exist (levels 0..{len(datasets) - 1})")
    levels = tuple(_level(url, node, d, axes, meta.get("coordinateTransformations")) for d in datasets)
    data = node[levels[level].path]
    assert isinstance(data, zarr.Array)  # _level read its shape: a group has none
    return ZarrInput(url=url, axes=axes, levels=levels, level=level, dtype=np.dtype(data.dtype),
                     chunks=tuple(int(c) for c in data.chunks), multiscales=True,
                     name=str(meta.get("name") or "image"))


def _parse_axes(url: str, raw: Any) -> tuple[Axis, ...]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{url}: multiscales has no 'axes'")
    axes = []
    for entry in raw:
        item = entry if isinstance(entry, dict) else {"name": str(entry), "type": _legacy_type(str(entry))}
        kind = item.get("type")
        if kind not in AXIS_TYPES:
            raise InputError(f"{url}: axis {item.get('name')!r} has unknown type {kind!r} (choices: "
                             f"{', '.join(AXIS_TYPES)})")
        unit = item.get("unit")
        if kind == "space" and unit is not None and unit not in UNIT_MM:
            raise InputError(f"{url}: axis {item.get('name')!r} has unit {unit!r}; supported: {', '.join(UNIT_MM)}")
        axes.append(Axis(name=str(item.get("name")), type=str(kind), unit=unit))
    return _check_axes(url, tuple(axes))


def _legacy_type(name: str) -> str | None:
    """NGFF 0.3 listed axes as bare names."""
    return AXIS_LETTERS.get(name.lower())


def _check_axes(url: str, axes: tuple[Axis, ...]) -> tuple[Axis, ...]:
    spatial = sum(a.type == "space" for a in axes)
    if spatial != 3:
        raise InputError(f"{url}: {spatial} spatial axes ({', '.join(a.name for a in axes)}); "
                         "segment-volume needs 3")
    for kind in ("channel", "time"):
        if sum(a.type == kind for a in axes) > 1:
            raise InputError(f"{url}: more than one {kind} axis")
    return axes


def _level(url: str, node: Any, dataset: Any, axes: tuple[Axis, ...], overall: Any) -> ZarrLevel:
    path = str(dataset.get("path", "")) if isinstance(dataset, dict) else ""
    if not path or path not in node:
        raise InputError(f"{url}: multiscales dataset {path!r} is missing from the store")
    shape = tuple(int(s) for s in node[path].shape)
    if len(shape) != len(axes):
        raise InputError(f"{url}: array {path!r} has {len(shape)} dimensions, the axes name {len(axes)}")
    scale, translation = _transforms(url, dataset.get("coordinateTransformations"), len(axes))
    if overall:
        outer_scale, outer_translation = _transforms(url, overall, len(axes))
        translation = [t * s + u for t, s, u in zip(translation, outer_scale, outer_translation, strict=True)]
        scale = [s * o for s, o in zip(scale, outer_scale, strict=True)]
    spatial = [i for i, a in enumerate(axes) if a.type == "space"]
    mm = [_unit_mm(url, axes[i]) for i in spatial]
    return ZarrLevel(path=path, shape=shape, scale=tuple(scale[i] * f for i, f in zip(spatial, mm, strict=True)),
                     translation=tuple(translation[i] * f for i, f in zip(spatial, mm, strict=True)))


def _unit_mm(url: str, axis: Axis) -> float:
    if axis.unit is None:
        logger.warning("%s: axis %r has no unit; taking it as millimetres", url, axis.name)
        return 1.0
    return UNIT_MM[axis.unit]


def _transforms(url: str, raw: Any, n: int) -> tuple[list[float], list[float]]:
    """(scale, translation) per axis from an NGFF transformation list (identity when absent)."""
    scale, translation = [1.0] * n, [0.0] * n
    for item in raw or []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in item:
            raise InputError(f"{url}: unsupported coordinateTransformation {item!r} (scale/translation values only)")
        values = [float(v) for v in item[kind]]
        if len(values) != n or not all(math.isfinite(v) for v in values):
            raise InputError(f"{url}: {kind} {values} must be {n} finite numbers")
        if kind == "scale":
            if any(v <= 0 for v in values):
                raise InputError(f"{url}: scale {values} must be positive")
            scale = [s * v for s, v in zip(scale, values, strict=True)]
        else:
            translation = [t + v for t, v in zip(translation, values, strict=True)]
    return scale, translation


def _plain(url: str, node: Any, *, array: str | None, spacing: Sequence[float] | None, axes: str | None) -> ZarrInput:
    import zarr

    if spacing is None or axes is None:
        raise InputError(f"{url}: a plain Zarr array needs --spacing and --axes (and --array NAME inside a group)")
    letters = axes.lower()
    if sorted(set(letters)) != sorted(letters) or any(c not in AXIS_LETTERS for c in letters):
        raise InputError(f"{url}: --axes {axes!r} must name each of z, y, x once (c, t optional), e.g. zyx")
    parsed = _check_axes(url, tuple(Axis(name=c, type=AXIS_LETTERS[c], unit="millimeter") for c in letters))
    if isinstance(node, zarr.Group):
        if not array:
            raise InputError(f"{url}: is a Zarr group; name the array with --array (found: "
                             f"{', '.join(sorted(node.array_keys())) or 'none'})")
        found = node[array] if array in node else None
        if not isinstance(found, zarr.Array):
            raise InputError(f"{url}: no array {array!r} in the group")
        data, path = found, array
    else:
        data, path = node, ""
    if data.ndim != len(parsed):
        raise InputError(f"{url}: array {path or '/'} has {data.ndim} dimensions, --axes {axes!r} names {len(parsed)}")
    values = [float(v) for v in spacing]
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{url}: --spacing must be 3 positive numbers (mm, spatial axes in stored order), "
                         f"got {spacing}")
    level = ZarrLevel(path=path, shape=tuple(int(s) for s in data.shape), scale=tuple(values),
                      translation=(0.0, 0.0, 0.0))
    return ZarrInput(url=url, axes=parsed, levels=(level,), level=0, dtype=np.dtype(data.dtype),
                     chunks=tuple(int(c) for c in data.chunks), multiscales=False, name=path or "image")


def parse_orientation(codes: str) -> str:
    """Upper-cased axis codes (one of R/L, A/P, S/I per spatial axis, stored order), checked."""
    text = codes.upper()
    used = [CODE_DIRECTION[c][0] for c in text if c in CODE_DIRECTION]
    if len(text) != 3 or len(used) != 3 or sorted(used) != [0, 1, 2]:
        raise InputError(f"--orientation {codes!r}: give 3 axis codes, one of R/L, A/P and S/I each, for the stored "
                         "spatial axes in order (e.g. SAR for z, y, x stored from a RAS scan)")
    return text


def zarr_geometry(source: ZarrInput, *, orientation: str | None, card_orientation: str | None) -> VolumeGeometry:
    """The :class:`VolumeGeometry` of ``source``'s level: spatial axes in stored order, the affine (RAS+ mm) from
    scale/translation and ``orientation``; without one, the card's orientation is assumed (windows keep the
    stored axis order), with a warning."""
    if orientation is None:
        if card_orientation is not None:
            logger.warning("%s: OME-Zarr stores no anatomical orientation; taking the stored axes (%s) as the "
                           "model's %s (windows keep the stored axis order); pass --orientation to state it",
                           source.url, ", ".join(source.axes[i].name for i in source.spatial_axes), card_orientation)
        codes = card_orientation or "RAS"
    else:
        codes = orientation
    codes = parse_orientation(codes)
    level = source.array
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, (code, size, offset) in enumerate(zip(codes, level.scale, level.translation, strict=True)):
        row, sign = CODE_DIRECTION[code]
        affine[row, axis] = sign * size
        affine[row, 3] += sign * offset
    return VolumeGeometry(shape=source.spatial_shape, affine=tuple(float(v) for v in affine.ravel()),
                          zooms=tuple(float(s) for s in level.scale), sform_code=1,
                          srow=tuple(float(v) for v in affine[:3].ravel()))
