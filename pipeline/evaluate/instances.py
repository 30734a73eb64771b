"""Instance labels: each connected object of chosen classes (lesions, nodules, buildings) gets its own id.

Objects are the face-connected components of a class in the work store's ``labels``, found chunk
by chunk and merged across chunk borders (:mod:`pipeline.engine.components`, equal to
``scipy.ndimage.label`` on the whole mask). Ids are unique across the chosen classes (the first
class's objects come first). Written beside the mask as ``<mask>_instances.nii.gz`` / ``.tif``
(uint32, 0 = no object, the mask's exact geometry), with one row per object in the report under
``"instances"`` and in ``<mask>.instances.csv``: size (voxels and ml, or pixels and map units²),
and centroid in array indices and in world (NIfTI RAS mm, through the affine) or map coordinates
(through the raster's transform, pixel centres).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.config.cards import Label
from pipeline.config.choices import unknown_choice
from pipeline.engine.components import gather, label_components
from pipeline.errors import SettingsError
from pipeline.geometry import RasterGeometry, VolumeGeometry, block_slices
from pipeline.io.atomic import atomic_path
from pipeline.io.outputs import instance_csv_path, instance_mask_path
from pipeline.io.store import store_root, work_array, write_region

TARGET = "instances"


def parse_classes(values: Iterable[str] | None) -> list[str]:
    """``["lesion,nodule", "bone"]`` -> ``["lesion", "nodule", "bone"]`` (repeatable or comma lists)."""
    return [part.strip() for value in values or () for part in str(value).split(",") if part.strip()]


def resolve_classes(names: Sequence[str | int], labels: dict[int, Label]) -> list[int]:
    """Class names or values -> label values, in the order given, without repeats; background is refused."""
    by_name = {label.name: value for value, label in labels.items()}
    found: list[int] = []
    for name in names:
        text = str(name)
        value = by_name.get(text, int(text) if text.isdigit() and int(text) in labels else None)
        if value is None:
            raise SettingsError(unknown_choice("class for --instances", text, list(by_name)[1:]))
        if value == 0:
            raise SettingsError(f"--instances {text}: class 0 ({labels[0].name}) is background, not objects")
        if value not in found:
            found.append(value)
    return found


def check_instances(values: Iterable[str] | None, labels: dict[int, Label]) -> list[str]:
    """Parse ``--instances`` values and refuse unknown classes before any work; returns the class names."""
    names = parse_classes(values)
    resolve_classes(names, labels)
    return names


def _shift_into(store: str, source: str, target: str, region: tuple[slice, ...], offset: int) -> None:
    root = zarr.storage.LocalStore(store)
    ids = np.asarray(zarr.open_array(root, path=source, mode="r")[region])
    current = np.asarray(zarr.open_array(root, path=target, mode="r")[region])
    write_region(store, target, region, np.where(ids > 0, ids + np.uint32(offset), current).astype(np.uint32))


def find_instances(group: zarr.Group, classes: Sequence[int], *, client: Any = None,
                   valid: str | None = None) -> tuple[zarr.Array, list[dict[str, Any]]]:
    """Label the objects of ``classes`` in ``group['labels']`` into ``group['instances']``.

    Returns the array and one dict per object: ``id``, ``label``, ``count``, ``centroid_index``.
    """
    objects: list[dict[str, Any]] = []
    for number, value in enumerate(classes):
        name = TARGET if number == 0 else f"{TARGET}_next"
        found = label_components(group, "labels", name, values=(value,), valid=valid, client=client)
        offset = len(objects)
        if number:
            store = store_root(group)
            regions = list(block_slices(found.array.shape, found.array.chunks))
            gather(client, _shift_into, [(store, name, TARGET, region, offset) for region in regions])
            del group[name]
        for ident in range(1, found.count + 1):
            objects.append({"id": ident + offset, "label": int(value), "count": int(found.voxels[ident]),
                            "centroid_index": [float(c) for c in found.centroid[ident]]})
    return work_array(group, TARGET), objects


def volume_rows(objects: list[dict[str, Any]], labels: dict[int, Label],
                geometry: VolumeGeometry) -> list[dict[str, Any]]:
    """Report rows for volume objects: voxels, ml, centroid in voxel indices and RAS mm."""
    affine = geometry.affine_matrix
    rows = []
    for item in objects:
        ijk = np.asarray(item["centroid_index"], dtype=np.float64)
        world = affine[:3, :3] @ ijk + affine[:3, 3]
        rows.append({"id": item["id"], "label": item["label"], "name": labels[item["label"]].name,
                     "voxels": item["count"], "volume_ml": round(item["count"] * geometry.voxel_volume_ml, 6),
                     "centroid_i": round(ijk[0], 3), "centroid_j": round(ijk[1], 3), "centroid_k": round(ijk[2], 3),
                     "centroid_x_mm": round(world[0], 3), "centroid_y_mm": round(world[1], 3),
                     "centroid_z_mm": round(world[2], 3)})
    return rows


def raster_rows(objects: list[dict[str, Any]], labels: dict[int, Label], geometry: RasterGeometry,
                metres: float | None) -> list[dict[str, Any]]:
    """Report rows for raster objects: pixels, area (map units² and m²), centroid as row/col and map x/y."""
    a, b, c, d, e, f = geometry.transform
    rows = []
    for item in objects:
        row, col = item["centroid_index"]
        x, y = a * (col + 0.5) + b * (row + 0.5) + c, d * (col + 0.5) + e * (row + 0.5) + f
        area = item["count"] * geometry.pixel_area
        rows.append({"id": item["id"], "label": item["label"], "name": labels[item["label"]].name,
                     "pixels": item["count"], "area": round(area, 6),
                     "area_m2": round(area * metres**2, 6) if metres else None,
                     "centroid_row": round(row, 3), "centroid_col": round(col, 3),
                     "centroid_x": round(x, 6), "centroid_y": round(y, 6)})
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path, fields: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


VOLUME_FIELDS = ("id", "label", "name", "voxels", "volume_ml", "centroid_i", "centroid_j", "centroid_k",
                 "centroid_x_mm", "centroid_y_mm", "centroid_z_mm")
RASTER_FIELDS = ("id", "label", "name", "pixels", "area", "area_m2", "centroid_row", "centroid_col",
                 "centroid_x", "centroid_y")


def write_raster_instances(ids: zarr.Array, geometry: RasterGeometry, path: Path) -> None:
    """A tiled, DEFLATE uint32 GeoTIFF of instance ids on ``geometry``'s exact grid (0 = no object)."""
    import rasterio
    from rasterio.windows import Window

    from pipeline.io.geotiff import georeference

    profile = {"driver": "GTiff", "width": geometry.width, "height": geometry.height, "count": 1, "dtype": "uint32",
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
               **georeference(geometry)}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for rows, cols in block_slices(geometry.shape, ids.chunks):
            dst.write(np.asarray(ids[rows, cols], dtype=np.uint32), 1, window=Window.from_slices(rows, cols))
        dst.set_band_description(1, "instance id")


def volume_instances(group: zarr.Group, names: Sequence[str], labels: dict[int, Label], geometry: VolumeGeometry,
                     mask: Path, *, client: Any) -> dict[str, Any]:
    """``--instances`` for a volume: instance NIfTI + CSV beside ``mask``; returns the report section."""
    from pipeline.io.nifti import write_labels

    classes = resolve_classes(names, labels)
    ids, objects = find_instances(group, classes, client=client)
    rows = volume_rows(objects, labels, geometry)
    write_labels(ids, geometry, instance_mask_path(mask))
    write_csv(rows, instance_csv_path(mask), VOLUME_FIELDS)
    return _section(classes, labels, mask, rows)


def raster_instances(group: zarr.Group, names: Sequence[str], labels: dict[int, Label], geometry: RasterGeometry,
                     mask: Path, *, client: Any, metres: float | None) -> dict[str, Any]:
    """``--instances`` for a raster (nodata pixels are in no object): instance GeoTIFF + CSV beside ``mask``."""
    classes = resolve_classes(names, labels)
    ids, objects = find_instances(group, classes, client=client, valid="valid" if "valid" in group else None)
    rows = raster_rows(objects, labels, geometry, metres)
    write_raster_instances(ids, geometry, instance_mask_path(mask))
    write_csv(rows, instance_csv_path(mask), RASTER_FIELDS)
    return _section(classes, labels, mask, rows)


def _section(classes: list[int], labels: dict[int, Label], mask: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"classes": [labels[c].name for c in classes], "mask": str(instance_mask_path(mask)),
            "csv": str(instance_csv_path(mask)), "count": len(rows), "objects": rows}
