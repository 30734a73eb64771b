"""End to end, as a user runs it: our CLI vs the MONAI script, both as subprocesses, same model and cores.

    python bench/e2e.py --kind volume --sizes sample,1.4M,11M,138M,1G \\
        --ours "segment-volume {input} -o {output} --overwrite" [--ours-extra ARGS] [--monai-max 138M] [--threads 2]
    python bench/e2e.py --kind raster --sizes sample,16x,30k

For each size (inputs from bench/inputs.py, cached): one run of ``bench/monai_baseline.py`` (up to
``--monai-max``; above it MONAI's peak PSS is estimated from its bytes/voxel on the largest size it ran) and
one run of ``pipeline <ours>``, each measured from outside by bench/measure.py (wall seconds including
imports, cluster start, reading and writing; peak PSS and RSS of the whole process tree; peak bytes on disk
under our work directory), then the two masks compared voxel by voxel, streamed. The table is printed and
written to this kind's section of bench/RESULTS.md (``--results`` elsewhere, ``--no-write`` not at all).
Our template may use ``{input}``, ``{output}`` and ``{workdir}``; without ``--work-dir`` in it,
``--work-dir {workdir}`` is appended so the work store sits where it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inputs  # noqa: E402
from measure import Measurement, measure  # noqa: E402

ROOT = inputs.ROOT
KINDS = {
    "volume": {"sizes": inputs.VOLUMES, "ours": "segment-volume {input} -o {output} --overwrite",
               "monai_max": "138M", "suffix": ".nii.gz", "unit": "vox", "heading": "volumes"},
    "raster": {"sizes": inputs.RASTERS, "ours": "segment-raster {input} -o {output} --overwrite",
               "monai_max": "16x", "suffix": ".tif", "unit": "px", "heading": "rasters"},
}
MB = 2**20
EQUAL_TARGET = 99.99  #: labels equal to MONAI's on at least this % of voxels


@dataclass
class Row:
    name: str
    elements: int
    monai: Measurement | None
    ours: Measurement
    equal_percent: float | None
    stages: dict[str, float] | None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kind = KINDS[args.kind]
    names, order = args.sizes.split(","), list(kind["sizes"])
    available = sorted(os.sched_getaffinity(0))
    cores = available[: args.threads]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    device = device_description(env)
    scratch = args.scratch or inputs.CACHE / "runs"
    rows = []
    for name in names:
        source = inputs.volume(name, args.format) if args.kind == "volume" else inputs.raster(name)
        run_dir = scratch / f"{args.kind}-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        suffix = f".{args.format}" if args.kind == "volume" else kind["suffix"]
        monai = None
        if order.index(name) <= order.index(args.monai_max) and args.format != "ome.zarr":  # MONAI reads no Zarr
            monai_out = run_dir / "monai" / f"mask{suffix}"
            monai_out.parent.mkdir(parents=True)
            monai = measure([sys.executable, str(ROOT / "bench" / "monai_baseline.py"), str(source), str(monai_out),
                             "--threads", str(args.threads), *(["--model", args.model] if args.model else [])],
                            cores=cores, env=env, log_dir=run_dir / "monai-logs")
            report_failure("MONAI", name, monai)
        ours_out = run_dir / "ours" / f"{name}_seg{suffix}"
        ours_out.parent.mkdir(parents=True)
        work = run_dir / "ours-work"
        ours = measure(ours_command(args, source, ours_out, work), cores=cores, env=env, watch=work,
                       log_dir=run_dir / "ours-logs")
        report_failure("ours", name, ours)
        equal = None
        if monai is not None and monai.returncode == 0 and ours.returncode == 0:
            compare = compare_volumes if args.kind == "volume" else compare_rasters
            same, total = compare(monai_out, ours_out)
            equal = 100.0 * same / total if total else None
        row = Row(name, element_count(source), monai, ours, equal, stages_of(ours_out.parent))
        rows.append(row)
        print(f"{name}: {json.dumps(row_facts(row))}", flush=True)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    body = section_body(args, rows, device, cores, len(available))
    print(body)
    if not args.no_write:
        write_section(args.results, f"e2e-{args.kind}-{'cuda' if device.startswith('GPU') else 'cpu'}", body)
    failed = any(r.ours.returncode or (r.monai and r.monai.returncode) for r in rows)
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=list(KINDS), default="volume")
    parser.add_argument("--sizes", default=None, help="comma list (default: sample,1.4M / sample)")
    parser.add_argument("--ours", default=None, help="our CLI arguments, a template (default: per kind)")
    parser.add_argument("--ours-extra", default="", help="more arguments for our CLI, e.g. '--workers 2'")
    parser.add_argument("--monai-max", default=None, help="largest size MONAI runs (default: 138M / 16x)")
    parser.add_argument("--threads", type=int, default=2, help="cores both sides are pinned to; MONAI's torch threads")
    parser.add_argument("--model", default=None, help="card for both sides (default: ct-organs / buildings)")
    parser.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "ome.zarr"],
                        help="volume input and mask files (ome.zarr: ours only, labels into a separate store)")
    parser.add_argument("--note", default="", help="a line to put in the RESULTS.md section")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="outputs and work stores (default bench/.cache/runs)")
    parser.add_argument("--keep", action="store_true", help="keep each size's outputs and logs")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    kind = KINDS[args.kind]
    args.sizes = args.sizes or ("sample,1.4M" if args.kind == "volume" else "sample")
    args.ours = args.ours or kind["ours"]
    args.monai_max = args.monai_max or kind["monai_max"]
    unknown = [n for n in [*args.sizes.split(","), args.monai_max] if n not in kind["sizes"]]
    if unknown:
        parser.error(f"unknown {args.kind} size {unknown[0]!r}; choose from {', '.join(kind['sizes'])}")
    if not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads {args.threads}: {len(os.sched_getaffinity(0))} cores are available")
    return args


def ours_command(args: argparse.Namespace, source: Path, output: Path, work: Path) -> list[str]:
    """``pipeline`` (beside this interpreter) + the template filled in + extras (+ --model, --work-dir)."""
    exe = Path(sys.executable).with_name("pipeline")
    prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    fill = {"input": source, "output": output, "workdir": work}
    command = [word.format(**fill) for word in shlex.split(args.ours)] + shlex.split(args.ours_extra)
    if args.model and not {"-m", "--model"} & set(command):
        command += ["--model", args.model]
    if "--work-dir" not in command:
        command += ["--work-dir", str(work)]
    return prefix + command


def report_failure(side: str, name: str, run: Measurement) -> None:
    if run.returncode:
        tail = run.stderr.strip().splitlines()[-5:]
        print(f"{name}: {side} exited {run.returncode}:\n  " + "\n  ".join(tail), file=sys.stderr, flush=True)


def element_count(path: Path) -> int:
    if path.name.endswith((".tif", ".tiff")):
        import rasterio

        with rasterio.open(path) as src:
            return src.width * src.height
    if path.name.endswith(".zarr"):
        import zarr

        return int(np.prod(zarr.open_group(str(path), mode="r")["0"].shape))
    import nibabel as nib

    return int(np.prod(nib.load(path).shape))


def compare_volumes(a: Path, b: Path, chunk: int = 2**24) -> tuple[int, int]:
    """(equal voxels, voxels) of two NIfTI masks on the same grid, streamed: both files are read front to
    back ``chunk`` voxels at a time (same shape, so the same voxel order), never whole."""
    import nibabel as nib
    from nibabel.openers import Opener

    pa, pb = nib.load(a).dataobj, nib.load(b).dataobj
    if pa.shape != pb.shape:
        raise SystemExit(f"error: {b}: shape {pb.shape} differs from MONAI's {pa.shape}")
    total, same = int(np.prod(pa.shape)), 0
    with Opener(str(a)) as fa, Opener(str(b)) as fb:
        fa.seek(pa.offset)
        fb.seek(pb.offset)
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            xa = np.frombuffer(fa.read(n * pa.dtype.itemsize), pa.dtype)
            xb = np.frombuffer(fb.read(n * pb.dtype.itemsize), pb.dtype)
            same += int(np.count_nonzero(xa == xb))
    return same, total


def compare_rasters(a: Path, b: Path, rows: int = 1024) -> tuple[int, int]:
    """(equal pixels, pixels) of two masks, strip by strip; pixels ours marks nodata (255) are left out
    (MONAI's script does not know nodata; its input there is the same 0 ours gives the network)."""
    import rasterio
    from rasterio.windows import Window

    same = total = 0
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        if ra.shape != rb.shape:
            raise SystemExit(f"error: {b}: shape {rb.shape} differs from MONAI's {ra.shape}")
        for r0 in range(0, ra.height, rows):
            window = Window(0, r0, ra.width, min(rows, ra.height - r0))
            xa, xb = ra.read(1, window=window), rb.read(1, window=window)
            valid = xb != 255
            same += int(np.count_nonzero((xa == xb) & valid))
            total += int(np.count_nonzero(valid))
    return same, total


def stages_of(directory: Path) -> dict[str, float] | None:
    """Stage seconds from our report JSON: its ``stages`` (top level or under ``run``) when it has them,
    else the ``run`` section's ``seconds_*`` (total, inference); None without a report."""
    for path in directory.glob("*.report.json"):
        report = json.loads(path.read_text())
        run = report.get("run", {})
        stages = report.get("stages") or run.get("stages") or {
            k.removeprefix("seconds_"): v for k, v in run.items() if k.startswith("seconds_")}
        if isinstance(stages, dict):
            return {str(k): float(v) for k, v in stages.items() if isinstance(v, (int, float))} or None
    return None


def device_description(env: dict[str, str]) -> str:
    """'GPU <name>' when torch sees CUDA (asked in a child, so this process never holds a CUDA context),
    else 'CPU <model name from /proc/cpuinfo>'."""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    gpu = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout.strip()
    if gpu:
        return f"GPU {gpu} (CUDA + AMP on both sides)"
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown")
    return f"CPU {model}"


def _cpuinfo() -> Iterator[str]:
    try:
        yield from Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return


def row_facts(row: Row) -> dict[str, Any]:
    def facts(m: Measurement | None) -> dict[str, Any] | None:
        if m is None:
            return None
        return {"rc": m.returncode, "s": round(m.seconds, 2), "pss_mb": round(m.peak_pss_bytes / MB),
                "rss_mb": round(m.peak_rss_bytes / MB), "processes": m.peak_processes, "samples": m.samples,
                "pss_reads": m.pss_reads,
                **({"dir_mb": round(m.peak_dir_bytes / MB, 1)} if m.peak_dir_bytes is not None else {})}
    return {"elements": row.elements, "monai": facts(row.monai), "ours": facts(row.ours),
            "equal_percent": row.equal_percent, "stages": row.stages}


def monai_bytes_per_element(rows: list[Row]) -> float | None:
    """Peak PSS / voxels of MONAI's run on the largest size it ran (successfully)."""
    measured = [r for r in rows if r.monai is not None and r.monai.returncode == 0]
    if not measured:
        return None
    largest = max(measured, key=lambda r: r.elements)
    return largest.monai.peak_pss_bytes / largest.elements  # type: ignore[union-attr]


def table(rows: list[Row], unit: str) -> str:
    """One markdown row per size; failed runs say so, MONAI sizes it did not run carry its estimated PSS."""
    per_element = monai_bytes_per_element(rows)
    lines = [f"| input | {unit} | MONAI s | MONAI PSS MB | MONAI RSS MB | ours s | ours PSS MB | ours RSS MB "
             "| ours work store MB | MONAI s / ours s | labels equal % | ours stages s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.monai is None:
            estimate = f"~{per_element * r.elements / MB:,.0f} (est.)" if per_element else "-"
            monai = ["-", estimate, "-"]
        elif r.monai.returncode:
            monai = [f"failed (exit {r.monai.returncode})", "-", "-"]
        else:
            m = r.monai
            monai = [f"{m.seconds:.1f}", f"{m.peak_pss_bytes / MB:,.0f}", f"{m.peak_rss_bytes / MB:,.0f}"]
        o = r.ours
        ours = [f"failed (exit {o.returncode})" if o.returncode else f"{o.seconds:.1f}",
                f"{o.peak_pss_bytes / MB:,.0f}", f"{o.peak_rss_bytes / MB:,.0f}",
                f"{(o.peak_dir_bytes or 0) / MB:,.1f}"]
        ok = r.monai is not None and not r.monai.returncode and not o.returncode
        ratio = f"{r.monai.seconds / o.seconds:.2f}" if ok else "-"  # type: ignore[union-attr]
        equal = "-" if r.equal_percent is None else f"{r.equal_percent:.4f}"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stages.items()) if r.stages else "-"
        lines.append(f"| {r.name} | {r.elements:,} | " + " | ".join([*monai, *ours, ratio, equal, stages]) + " |")
    return "\n".join(lines)


def section_body(args: argparse.Namespace, rows: list[Row], device: str, cores: list[int], machine_cores: int) -> str:
    kind = KINDS[args.kind]
    command = "python bench/e2e.py " + shlex.join(sys.argv[1:])
    placeholders = ours_command(args, Path("{input}"), Path("{output}"), Path("{workdir}"))[1:]
    ours = " ".join(a if a.startswith("{") else shlex.quote(a) for a in ["pipeline", *placeholders])
    below = [r.name for r in rows if r.equal_percent is not None and r.equal_percent < EQUAL_TARGET]
    lines = [
        f"### End to end: {kind['heading']} ({'CUDA' if device.startswith('GPU') else 'CPU'})", "",
        f"Run: `{command}` on {datetime.date.today().isoformat()}.", "",
        f"Device: {device}; both sides pinned to cores {','.join(map(str, cores))} ({len(cores)} of "
        f"{machine_cores}); MONAI `torch.set_num_threads({args.threads})`; ours: `{ours}`.",
        *([f"", f"**{args.note}**"] if args.note else []), "",
        table(rows, kind["unit"]), "",
        "One run each, as subprocesses, timed and sampled from outside (bench/measure.py, ~50 ms): s = wall "
        "seconds (imports, reading, cluster start, inference, writing, report); PSS = peak of the summed "
        "proportional set size of the whole process tree (shared pages counted once); RSS = peak of the summed "
        "resident sizes (shared pages counted per process); work store = peak bytes on disk under our "
        "`--work-dir`, walked every second. MONAI's est. = its peak PSS per element on the largest size it ran, "
        "times the elements. Labels equal: voxel by voxel against MONAI's mask (pixels ours marks nodata left "
        f"out; target >= {EQUAL_TARGET} %)" + (f"; below target: {', '.join(below)}" if below else "")
        + ". Ours' stages: from its report JSON (`stages`, else `run.seconds_*`, which start after imports).",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str, body: str) -> None:
    """Replace (or append) the ``<!-- section:begin/end -->`` block of ``path``; the rest stays as it is."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
