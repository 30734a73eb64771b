"""A block task's input: the span its windows cover, read from the work store (or an array read in place).

Read once per task, zero-padded where MONAI pads. Stored in fewer than 4 bytes per value (a CT's int16, a scene's
uint8), the span stays in its stored type and each batch of windows is preprocessed as it is cut, instead of a
float32 copy of the whole span (16 MB for a 128^3 block of a CT): the card's preprocessing is pointwise given the
image's statistics, so the windows see the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.merger import Span
from pipeline.engine.predictor import Prepare
from pipeline.engine.windows import padded_index


def open_array(store: str, name: str, mode: str) -> Any:
    """Opened per task, never cached: a rerun may recreate the store at the same path with another shape."""
    import zarr

    from pipeline.io.store import writable

    array = zarr.open_array(zarr.storage.LocalStore(store, read_only=mode == "r"), path=name, mode=mode)
    return array if mode == "r" else writable(array)


@dataclass(frozen=True)
class ImageSource:
    """Reads a zero-padded span of the work store's image (picklable: paths, no handles)."""

    store: str
    name: str
    pads: tuple[int, ...]
    preprocess: Callable[..., np.ndarray]  #: (block, statistics[, valid]) -> float32 block
    statistics: Any
    valid: str | None = None  #: name of a boolean (*spatial) validity array; invalid pixels skip windows
    array: Any = None  #: a picklable (C, *spatial) array read in place of ``store/name`` (an input read without a copy)

    def read(self, span: Span) -> tuple[np.ndarray, np.ndarray | None, Prepare | None]:
        """The span, its validity mask (False where padded) when there is a validity array, and how its windows
        become network input: None when the span is already preprocessed (float32, zeros where padded).

        A span stored in fewer than 4 bytes per value (a CT's int16, a scene's uint8) stays in its stored type
        and each batch of windows is preprocessed as it is cut (:class:`WindowPrep`): half the memory or less of
        a float32 copy, for preprocessing that is pointwise (given the global statistics), so the same values.
        """
        array = self.array if self.array is not None else open_array(self.store, self.name, "r")
        spatial, pad = padded_index(array.shape[1:], *span, self.pads)
        index, padding = (slice(None), *spatial), [(0, 0), *pad]
        raw = np.asarray(array[index])
        valid = None
        if self.valid is not None:
            valid = np.asarray(open_array(self.store, self.valid, "r")[spatial], dtype=bool)
        padded = any(p != (0, 0) for p in pad)
        narrow = raw.dtype.itemsize < 4
        if narrow:
            region = raw
        elif valid is not None:
            region = np.asarray(self.preprocess(raw, self.statistics, valid), dtype=np.float32)
        else:
            region = np.asarray(self.preprocess(raw, self.statistics), dtype=np.float32)
        if padded:
            region = np.pad(region, padding, mode="constant", constant_values=0)
            if valid is not None:
                valid = np.pad(valid, pad, mode="constant", constant_values=False)
        if not narrow:
            return region, valid, None
        inside = tuple(slice(before, n - after) for (before, after), n in zip(pad, region.shape[1:], strict=True))
        return region, valid, WindowPrep(self.preprocess, self.statistics, valid, inside if padded else None)


@dataclass(frozen=True)
class WindowPrep:
    """Preprocess a batch of windows cut from a span kept in its stored type, as :meth:`ImageSource.read` would
    have preprocessed the whole span: the card's steps with the image's statistics, invalid pixels neutral, and
    zeros where MONAI pads (outside ``inside``, the image's part of the span; None: no padding)."""

    preprocess: Callable[..., np.ndarray]
    statistics: Any
    valid: np.ndarray | None
    inside: tuple[slice, ...] | None

    def __call__(self, windows: np.ndarray, boxes: list[tuple[slice, ...]]) -> np.ndarray:
        out = np.empty(windows.shape, np.float32)
        for n, box in enumerate(boxes):
            if self.valid is not None:
                out[n] = self.preprocess(windows[n], self.statistics, self.valid[box])
            else:
                out[n] = self.preprocess(windows[n], self.statistics)
            for axis, (b, i) in enumerate(zip(box, self.inside or (), strict=False)):  # MONAI pads with zeros
                before = (slice(None),) * (axis + 1)
                out[n][(*before, slice(0, max(i.start - b.start, 0)))] = 0
                out[n][(*before, slice(max(i.stop - b.start, 0), None))] = 0
        return out
