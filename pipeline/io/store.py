"""The Zarr v3 work store: where a tiled input, its labels and probabilities live between steps.

Layout of ``<work>.zarr``: ``image`` (C, *spatial) in the input's dtype, with the
geometry and source identity in its attributes; ``labels`` (*spatial) uint8/uint16;
optionally ``probabilities`` (C_out, *spatial) float16. Every array is chunked on the
engine's block grid, so one Dask task owns each chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.array_spec import ArrayConfigParams

from pipeline.errors import (
    CardError,
    InputError,
    ModelError,
    OutputBusyError,
    OutputExistsError,
    RunInterrupted,
    SettingsError,
    StorageError,
    as_storage_error,
    storage_failure,
)
from pipeline.io.atomic import atomic_path, sweep_partials
from pipeline.io.lock import lock_holder, output_lock
from pipeline.io.outputs import lock_path

logger = logging.getLogger(__name__)

#: The work store's codec. Its arrays are written once and read a few times within one run, then deleted, so
#: speed matters more than size: on a CT's int16 128^3 chunk, lz4 (level 5, byte shuffle) encoded in 2.5 ms and
#: decoded in 1.5 ms against 24 and 3.8 ms for zstd (level 3, bit shuffle), and compressed better too (3.8x
#: against 2.7x); labels compress 12x instead of 40x, but they are a small part of the store (measured
#: with numcodecs' Blosc on the 11 Mvox benchmark CT, 2026-12-03).
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
#: Every chunk is written, even one holding only the fill value: zarr would otherwise compare each chunk with it
#: before writing, which halved the write rate of label chunks (95 -> 198 MB/s for 128^3 uint8 on the 11 Mvox
#: benchmark CT, 2026-12-03). A block is written once, so the comparison rarely saves anything here.
WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
SPATIAL_NAMES = {2: ("y", "x"), 3: ("i", "j", "k")}
FINGERPRINT = "fingerprint.json"


def open_work_group(path: Path, *, overwrite: bool = False) -> zarr.Group:
    """Open (or create) the work store group at ``path``."""
    return zarr.open_group(zarr.storage.LocalStore(path), mode="w" if overwrite else "a", zarr_format=3)


@dataclass(frozen=True)
class Ledger:
    """Completion records: one small file per finished step (``image``, each block), written after
    the data it vouches for, by rename, so a record never exists for half-written chunks.

    Picklable (a path), so the Dask task that writes a block records it too.
    """

    path: str

    def mark(self, name: str) -> None:
        final = os.path.join(self.path, name)
        tmp = f"{final}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def mark_block(self, region: Sequence[slice]) -> None:
        self.mark(block_name(region))

    def has_block(self, region: Sequence[slice]) -> bool:
        return block_name(region) in self

    def names(self) -> set[str]:
        try:
            return {n for n in os.listdir(self.path) if not n.endswith(".tmp")}
        except FileNotFoundError:
            return set()

    def __contains__(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name))


def block_name(region: Sequence[slice]) -> str:
    """A block's completion record name, from where it starts: ``block-0-128-64``."""
    return "block-" + "-".join(str(s.start or 0) for s in region)


@dataclass(frozen=True)
class WorkStore:
    """A run's work directory: ``work.zarr``, the ledger, and the fingerprint it was made for."""

    path: Path
    group: zarr.Group
    ledger: Ledger
    resumed: bool

    def blocks_done(self) -> int:
        return sum(name.startswith("block-") for name in self.ledger.names())


def work_dir_for(root: Path, output: Path) -> Path:
    """One hidden work directory per output path, so a re-run of the same command finds it."""
    digest = hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:8]
    return root / f".volseg-{output.name}-{digest}.work"


#: Failures after which the work store is worth keeping: the input and model were fine, the run
#: was stopped (signal, disk full, lost worker, crash). Input/model errors would fail again.
_NOT_RESUMABLE = (InputError, CardError, ModelError, SettingsError, OutputExistsError)


@contextlib.contextmanager
def work_store(root: Path, output: Path, fingerprint: dict[str, Any], *,
               check: Callable[[], None] | None = None,
               keep: Callable[[BaseException], bool] | None = None) -> Iterator[WorkStore]:
    """Open (resume) or create the work store for ``output``, under the output's exclusive lock.

    The lock is keyed on the output (:func:`pipeline.io.outputs.lock_path`), not on ``root``: two runs
    writing one output exclude each other whatever their work directories. ``check`` (the output
    guard) runs again once the lock is held, so a run that finished meanwhile is not replaced.

    A store left by an interrupted run with the same ``fingerprint`` (input sha256, model, engine
    parameters, code) is resumed; one with any other fingerprint is discarded, never mixed. The
    store is removed after success, after input/model/settings errors and after any other error a
    rerun would repeat; after an interruption or an infrastructure failure (see :func:`_resumable`)
    it is kept, and the error says how to resume. ``keep`` names further failures worth resuming that
    only the caller can recognise: the scheduler's lost worker (:func:`pipeline.cluster.lost_worker`;
    io knows no scheduler).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"{root}: cannot create the work directory ({e.strerror or e})", e.errno) from e
    path = work_dir_for(root, output)
    lock = lock_path(output)
    with output_lock(lock) as held:
        if not held:
            raise OutputBusyError(f"{output}: another run is writing it ({lock_holder(lock)}); "
                                  "wait for it to finish")
        if check is not None:
            check()
        sweep_partials(output.parent)
        store = _open(path, fingerprint)
        try:
            yield store
        except KeyboardInterrupt as e:
            raise RunInterrupted(f"interrupted; {_kept(store)}") from e
        except _NOT_RESUMABLE:
            shutil.rmtree(path, ignore_errors=True)
            raise
        except BaseException as e:
            # a bad setting or a bug: a rerun would fail the same way
            if not (_resumable(e) or (keep is not None and keep(e))):
                shutil.rmtree(path, ignore_errors=True)
                raise
            if storage_failure(e):  # the storage's fault, not the input's: resumable, and flows retry it
                error = as_storage_error(e, output)
                raise StorageError(f"{error}; {_kept(store)}", e.errno) from e
            logger.warning("work store kept for resuming: %s", path)  # transient OSErrors stay as they are
            raise
        shutil.rmtree(path, ignore_errors=True)


def _resumable(error: BaseException) -> bool:
    """A failure a rerun can finish: the file system or network failed (OSError, timeouts, lost
    connections), memory ran out, or the process is exiting (SystemExit). A lost worker: ``keep``."""
    return isinstance(error, OSError | MemoryError | SystemExit | GeneratorExit)


def _kept(store: WorkStore) -> str:
    return (f"{store.blocks_done()} finished block(s) kept in {store.path}; "
            "run the same command again to resume")


def _open(path: Path, fingerprint: dict[str, Any]) -> WorkStore:
    record = path / FINGERPRINT
    if path.exists():
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == fingerprint:
            logger.info("resuming from %s", path)
            return WorkStore(path, open_work_group(path / "work.zarr"), Ledger(str(path / "done")), resumed=True)
        changed = sorted(k for k in fingerprint if (previous or {}).get(k) != fingerprint[k])
        logger.warning("discarding work store %s: made with a different %s", path, ", ".join(changed) or "format")
        shutil.rmtree(path)
    (path / "done").mkdir(parents=True)
    group = open_work_group(path / "work.zarr", overwrite=True)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True), encoding="utf-8")
    return WorkStore(path, group, Ledger(str(path / "done")), resumed=False)


@contextlib.contextmanager
def one_chunk_at_a_time() -> Iterator[None]:
    """Reads that decode one chunk at a time (Zarr's ``async.concurrency`` 1), for the driver's small reads across
    many chunks (report planes, strided looks): by default it decodes ten at once, whole, for a plane it keeps a
    sliver of. An 11 Mvox CT's HTML report peaked 35 MB above the inference that way."""
    with zarr.config.set({"async.concurrency": 1}):
        yield


def create_array(group: zarr.Group, name: str, *, shape: Sequence[int], chunks: Sequence[int],
                 dtype: Any, attributes: dict[str, Any] | None = None, channel_axis: bool = True) -> zarr.Array:
    """Create a compressed array ``name`` in the work store, replacing an older one."""
    spatial = len(shape) - (1 if channel_axis else 0)
    names = (("c",) if channel_axis else ()) + SPATIAL_NAMES.get(spatial, tuple(f"d{i}" for i in range(spatial)))
    return group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype),
                              compressors=COMPRESSOR, attributes=attributes or {}, dimension_names=names,
                              fill_value=0, overwrite=True, config=WRITE_CONFIG)


def writable(array: zarr.Array) -> zarr.Array:
    """``array`` (just opened) with the work store's write settings: a reopened array has zarr's defaults."""
    return array.with_config(WRITE_CONFIG)


def write_region(store_path: str, name: str, region: tuple[slice, ...], values: np.ndarray) -> None:
    """Write ``values`` into ``region`` of array ``name``; runs inside a Dask task that owns those chunks."""
    array = writable(zarr.open_array(zarr.storage.LocalStore(store_path), path=name, mode="r+"))
    array[region] = values


def store_root(group: zarr.Group) -> str:
    """The local directory of a work store's group, as Dask tasks reopen it (they get a path, not a store)."""
    return str(group.store.root)  # type: ignore[attr-defined]  # a LocalStore; zarr types it as Store


def work_array(group: zarr.Group, name: str) -> zarr.Array:
    """``group[name]`` as the array it is in a work store (zarr types members as array or group)."""
    member = group[name]
    if not isinstance(member, zarr.Array):
        raise TypeError(f"{name!r} in the work store is a group, not an array")
    return member
