"""CPU inference backends: run a network's forward pass with OpenVINO instead of torch eager.

On CPU the same MONAI network runs faster through OpenVINO (measured in ``bench/BACKENDS.md``). A network
is converted once per machine (cached on disk, keyed by the weights' sha256, the network's structure, the
window shape and the library versions), compiled once per process and thread count, and checked against
torch on a seeded input before it is used. Anything that does not convert, or whose outputs differ from
torch's, falls back to the torch forward with one warning, so a backend can never change a result beyond
the parity tolerances (probabilities within :data:`PROB_TOLERANCE`).

The engine asks :func:`resolve_backend` which backend to use on its device, then :func:`compiled_forward`
for a callable ``(B, C, *window) float32 tensor -> (B, C_out, *window) float32 tensor``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import re
import shutil
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.choices import BACKENDS, unknown_choice
from pipeline.device import inference_threads
from pipeline.errors import SettingsError
from pipeline.model.conversions import CACHE_FORMAT, cache_dir, card_index

logger = logging.getLogger(__name__)

#: Largest difference of softmax probabilities from torch's that a converted network may show.
PROB_TOLERANCE = 1e-3

Forward = Callable[[Any], Any]

#: Conversions this process has done (not cache loads): tests and benchmarks read it.
conversions = [0]

_models: dict[tuple[Any, ...], Any] = {}  # checked OpenVINO models; None: that network stays on torch
_compiled: dict[tuple[Any, ...], OpenVINOForward | None] = {}  # per model, thread count and streams
_by_network: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()  # fast path
_compiled_by_card: dict[tuple[Path, int, int], OpenVINOForward] = {}  # card index, threads, streams: no network
_build_lock = threading.Lock()


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: Any) -> str:
    """The backend that will run: ``auto`` is OpenVINO on a CPU device when it is installed, else torch.

    An explicit ``openvino`` is honoured on any device (the network then runs on the CPU: inputs are
    moved there and the outputs back); without the package it is a :class:`SettingsError`, not a guess.
    """
    if requested not in BACKENDS:
        raise SettingsError(unknown_choice("backend", str(requested), BACKENDS))
    if requested == "torch":
        return "torch"
    if requested == "openvino":
        if not openvino_available():
            raise SettingsError("backend 'openvino' is not installed (pip install openvino; or use --backend torch)")
        return "openvino"
    return "openvino" if getattr(device, "type", str(device)) == "cpu" and openvino_available() else "torch"


def compiled_forward(network: Any, *, backend: str, key: str, in_channels: int, window: tuple[int, ...],
                     batch: int, placement: Placement | None = None, identity: str | None = None) -> Forward:
    """A forward for ``(B <= batch, in_channels, *window)`` float32 tensors on ``backend``.

    ``key`` identifies the weights (their sha256). The result is cached per process and per
    :class:`Placement`; it is safe to call from several threads at once (an infer request each), their calls
    queued on its streams: give one caller all the threads on one stream, or each caller a stream.
    ``torch`` returns ``network`` itself; so does a network OpenVINO cannot convert faithfully, after one
    warning. With ``identity`` (a card's :func:`pipeline.model.models.card_identity`), a checked conversion
    is also recorded under it, so later processes find it with :func:`card_forward` without building the
    network (no torch import).
    """
    if backend == "auto":
        backend = resolve_backend(backend, "cpu")
    if backend == "torch":
        return network
    if backend != "openvino":
        raise SettingsError(unknown_choice("backend", str(backend), BACKENDS))
    args = (key, int(in_channels), tuple(int(s) for s in window), int(batch))
    placed = (placement or Placement()).resolved()
    with _build_lock:  # one conversion at a time; a second caller of the same network waits and reuses it
        per_network = _by_network.setdefault(network, {})
        if (*args, *placed) not in per_network:
            entry = (_structure(network), *args)
            if entry not in _models:  # converted (or found on disk) and checked once per process
                _models[entry], first = _checked_model(network, *args, placed)
                _compiled[(*entry, *placed)] = first
            model = _models[entry]
            if model is not None and (*entry, *placed) not in _compiled:
                _compiled[(*entry, *placed)] = _compile(network, model, in_channels, args[2], placed)
            per_network[(*args, *placed)] = None if model is None else _compiled[(*entry, *placed)]
            if model is not None and identity is not None:
                _remember_card(identity, _entry_name(network, key, in_channels, args[2]), in_channels, args[2])
        forward = per_network[(*args, *placed)]
    return network if forward is None else forward


def card_forward(identity: str, *, in_channels: int, window: tuple[int, ...],
                 placement: Placement | None = None) -> OpenVINOForward | None:
    """The checked conversion recorded for this card identity and window, compiled for ``placement``; None
    when there is none (or it cannot be read), and the caller takes the torch route, which records one.
    Sound because a card identity fixes the network exactly: architecture, arguments, the weights' sha256 and
    the library versions (:func:`pipeline.model.models.card_identity`)."""
    import openvino as ov

    window = tuple(int(s) for s in window)
    placed = (placement or Placement()).resolved()
    index = card_index(identity, in_channels, window)
    with _build_lock:
        if (index, *placed) in _compiled_by_card:
            return _compiled_by_card[(index, *placed)]
        try:
            name = index.read_text().strip()
            model = ov.Core().read_model(cache_dir() / name / "model.xml")
            if not model.has_rt_info("volseg_checked"):
                return None
            forward = OpenVINOForward(ov.Core().compile_model(model, "CPU", _compile_config(*placed)), window,
                                      int(in_channels))
        except Exception as e:  # no entry, or a damaged one: the torch route converts (and records) again
            logger.debug("no usable openvino entry for this card (%s)", _first_line(e))
            return None
        _compiled_by_card[(index, *placed)] = forward
        return forward


def _remember_card(identity: str, name: str, in_channels: int, window: tuple[int, ...]) -> None:
    """Point the card identity at entry ``name`` (written atomically; not fatal if the cache is read-only)."""
    index = card_index(identity, in_channels, window)
    with contextlib.suppress(OSError):
        if index.is_file() and index.read_text().strip() == name:
            return
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(f".{index.name}.{os.getpid()}.{threading.get_ident()}.partial")
        tmp.write_text(name + "\n")
        os.replace(tmp, index)


def clear_cache() -> None:
    """Forget this process's compiled networks (the disk cache stays): the next call loads as a new process would."""
    with _build_lock:
        _models.clear()
        _compiled.clear()
        _by_network.clear()
        _compiled_by_card.clear()


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the channel axis (axis 1), sigmoid for one channel: what the tolerances are stated on."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class OpenVINOForward:
    """A compiled network and a pool of infer requests (a request serves one call at a time)."""

    def __init__(self, compiled: Any, window: tuple[int, ...], in_channels: int) -> None:
        self.compiled = compiled
        self.shape = (in_channels, *window)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def __call__(self, x: Any) -> Any:
        """A torch tensor in, a torch tensor out (on ``x``'s device)."""
        import torch

        return torch.from_numpy(self.run(x.detach().to("cpu", torch.float32).numpy())).to(x.device)

    def run(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(B, C, *window) float32 NumPy in, (B, K, *window) float32 NumPy out: no torch involved.

        The outputs are copied out of the request's own buffer (the next call on it overwrites that),
        into ``out`` when it has their shape: a caller that reuses its arrays faults no fresh pages."""
        if tuple(array.shape[1:]) != self.shape:
            raise ValueError(f"compiled for windows of {self.shape}, got {tuple(array.shape[1:])}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer({0: array}, share_inputs=True, share_outputs=True)[0]
            if out is None or out.shape != result.shape or out.dtype != result.dtype:
                out = np.empty_like(result)
            np.copyto(out, result)
            return out
        finally:
            self._idle.put(request)


def _checked_model(network: Any, key: str, in_channels: int, window: tuple[int, ...], batch: int,
                   placement: tuple[int, int]) -> tuple[Any, OpenVINOForward | None]:
    """Load or convert, compile and check: the model and its forward on ``placement`` (threads, streams), or
    ``(None, None)`` (after one warning) when the network must stay on torch.

    The entry's lock is held throughout, so processes starting together convert once: the others wait and load.
    """
    import openvino as ov

    name = _entry_name(network, key, in_channels, window)
    with _cache_lock(cache_dir(), name):
        try:
            model = _load_or_convert(network, name, in_channels, window, batch)
            forward = OpenVINOForward(ov.Core().compile_model(model, "CPU", _compile_config(*placement)), window,
                                      in_channels)
            if not model.has_rt_info("volseg_checked"):
                _check_parity(network, forward, in_channels, window, batch)
                _store(model, name)
        except (OSError, MemoryError) as e:  # the machine's fault, not the network's: try again next time
            _warn_fallback(network, e)
            return None, None
        except Exception as e:  # conversion failures come as many types (tracing, frontend, compile, parity)
            _write_failure(name, _warn_fallback(network, e))
            return None, None
    return model, forward


def _compile(network: Any, model: Any, in_channels: int, window: tuple[int, ...],
             placement: tuple[int, int]) -> OpenVINOForward | None:
    """A checked model compiled for another (threads, streams)."""
    import openvino as ov

    try:
        return OpenVINOForward(ov.Core().compile_model(model, "CPU", _compile_config(*placement)), window, in_channels)
    except Exception as e:  # as in _checked_model: any failure leaves the network on torch
        _warn_fallback(network, e)
        return None


def _warn_fallback(network: Any, error: BaseException) -> str:
    reason = _first_line(error)
    logger.warning("openvino cannot run %s (%s); using torch for it", _describe(network), reason)
    return reason


@dataclass(frozen=True)
class Placement:
    """What a network is compiled for: ``threads`` (None: the worker's, which the cluster sets) shared out
    over ``streams``, one per caller that runs at once."""

    threads: int | None = None
    streams: int = 1

    def resolved(self) -> tuple[int, int]:
        """(threads, streams) as compiled: at most one stream per thread."""
        threads = int(self.threads or inference_threads())
        return threads, max(1, min(int(self.streams), threads))


def _compile_config(threads: int, streams: int = 1) -> dict[str, Any]:
    """fp32 everywhere (the CPU plugin would pick bf16 on CPUs that have it), no pinning: Dask worker processes
    share the cores. One task's calls on two streams were no faster, two tasks' are (bench/BACKENDS.md)."""
    return {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams,
            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


def _load_or_convert(network: Any, name: str, in_channels: int, window: tuple[int, ...], batch: int) -> Any:
    """The cached conversion if there is one, else a fresh one (a failure recorded by another process re-raised)."""
    import openvino as ov

    final = cache_dir() / name
    failure = final.with_name(f"{name}.failed")
    if failure.is_file():
        raise RuntimeError(failure.read_text(errors="replace").strip() or "failed before")
    if (final / "model.xml").is_file():
        try:
            return ov.Core().read_model(final / "model.xml")
        except Exception as e:  # a damaged entry: convert again and replace it
            logger.info("discarding cached conversion %s (%s)", final, _first_line(e))
            shutil.rmtree(final, ignore_errors=True)
    logger.info("converting %s to openvino (once; cached in %s)", _describe(network), final.parent)
    return _convert(network, in_channels, window, batch)


def _convert(network: Any, in_channels: int, window: tuple[int, ...], batch: int) -> Any:
    """Trace ``network`` on a zero batch; the batch axis stays dynamic so the last, smaller batch needs no padding."""
    import openvino as ov
    import torch

    example = torch.zeros(batch, in_channels, *window)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-fixed branches: the parity check is the judge
        model = ov.convert_model(network.eval(), example_input=example,
                                 input=[ov.PartialShape([-1, in_channels, *window])])
    conversions[0] += 1
    return model


def _check_parity(network: Any, forward: OpenVINOForward, in_channels: int, window: tuple[int, ...],
                  batch: int) -> None:
    """Refuse a conversion whose probabilities differ from torch's on a seeded input (a tracing that took
    a data-dependent branch, an operator converted wrongly): such a network stays on torch."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, *window, generator=generator)
    with torch.inference_mode():
        expected = network(x).float().numpy()
    got = forward(x).numpy()
    if got.shape != expected.shape:
        raise RuntimeError(f"output shape {got.shape} differs from torch's {expected.shape}")
    worst = float(np.max(np.abs(probabilities(got) - probabilities(expected))))
    if not worst <= PROB_TOLERANCE:  # NaN fails too
        raise RuntimeError(f"probabilities differ from torch by {worst:.2g} (> {PROB_TOLERANCE:g})")


def _store(model: Any, name: str) -> None:
    """Write the checked conversion atomically (a temporary directory renamed into place); not fatal if it fails."""
    import openvino as ov

    directory = cache_dir()
    final = directory / name
    if (final / "model.xml").is_file():
        return
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.partial"
    try:
        model.set_rt_info("true", "volseg_checked")
        tmp.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)  # the default would halve the weights
        os.rename(tmp, final)
    except OSError as e:
        logger.warning("cannot cache the openvino conversion in %s (%s); converting again next time", directory,
                       e.strerror or e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_failure(name: str, reason: str) -> None:
    """Remember a failed conversion, so other processes fall back at once instead of converting again."""
    failure = cache_dir() / f"{name}.failed"
    with contextlib.suppress(OSError):
        failure.parent.mkdir(parents=True, exist_ok=True)
        tmp = failure.with_name(f".{failure.name}.{os.getpid()}.partial")
        tmp.write_text(reason + "\n")
        os.replace(tmp, failure)


@contextlib.contextmanager
def _cache_lock(directory: Path, name: str) -> Any:
    """An exclusive ``flock`` per entry (released by the kernel however its holder dies); no lock if unwritable."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entry_name(network: Any, key: str, in_channels: int, window: tuple[int, ...]) -> str:
    """``<key prefix>-<C>x<window>-<digest>``: the digest covers the full key, the network's structure and the
    versions of torch and openvino, so a changed card or upgraded library never reuses an old conversion."""
    import openvino as ov
    import torch

    digest = hashlib.sha256("\n".join(
        [key, _structure(network), str(in_channels), repr(window), torch.__version__, ov.__version__,
         str(CACHE_FORMAT)]).encode()).hexdigest()
    prefix = re.sub(r"[^0-9A-Za-z_.-]", "_", key)[:16] or "model"
    return f"{prefix}-{'x'.join(map(str, (in_channels, *window)))}-{digest[:16]}"


def _structure(network: Any) -> str:
    """A digest of the module tree (layer types and their settings, which weights alone do not fix)."""
    return hashlib.sha256(repr(network).encode()).hexdigest()


def _describe(network: Any) -> str:
    return type(network).__name__


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
