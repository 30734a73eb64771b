"""Every case of the bad-input corpus, through the real CLI in a subprocess.

For each: the expected exit code; exactly one ``error:`` line (or, for inputs accepted with a warning,
the warning) containing the expected text and naming the file; no traceback; nothing new on disk (no
partial output, work store, lock or temp file) and every input byte-identical; a payload never ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.badinputs.make_corpus import MARKER, Case, Outcome, make_corpus, message_line, run_case, snapshot

#: The case names, in corpus order (checked against the generator below), so collection stays instant.
CASE_NAMES = [
    "nifti-truncated-gzip", "nifti-wrong-magic", "nifti-not-gzip", "nifti-4d", "nifti-2d", "nifti-huge-dims",
    "nifti-dims-beyond-data", "nifti-zero-axis", "nifti-nan", "nifti-inf", "nifti-singular-affine",
    "nifti-nonfinite-affine", "nifti-qform-sform-disagree", "nifti-reference-grid", "nifti-reference-affine",
    "nifti-gzip-crc", "nifti-slope-overflow", "nifti-float64-overflow", "nifti-unknown-datatype",
    "nifti-newline-name", "nifti-is-directory", "nifti-fifo", "nifti-label-beyond-2-32",
    "geotiff-wrong-magic", "geotiff-zero-bands", "geotiff-complex-band", "geotiff-truncated",
    "geotiff-broken-tile", "geotiff-reference-crs", "geotiff-reference-grid", "geotiff-float64-overflow",
    "weights-pickle-code", "weights-truncated", "weights-checksum", "weights-not-torch", "weights-dev-zero",
    "card-unknown-architecture", "card-python-tag", "card-anchor-bomb", "card-deep-nesting", "card-huge-roi",
    "card-colour-999", "card-unknown-name", "card-colour-out-of-range", "option-memory-limit-nonsense",
    "option-memory-limit-tiny", "option-dask-address", "option-workers-unbounded", "option-chunk-size-one",
    "option-after-subcommand-unknown", "option-raster-too-big",
    "catalog-python-tag", "catalog-is-directory", "catalog-dotdot-output", "catalog-dotdot-glob",
    "catalog-symlink-output",
    "catalog-symlink-subdirectory",
    "output-under-file", "workdir-under-file", "output-dir-readonly", "output-exists",
    "output-report-csv-exists", "output-upper-case-instances", "output-is-directory", "output-store-not-ours",
    "output-is-reference", "output-instances-is-scan", "output-symlink-to-scan", "evaluate-output-is-prediction",
    "vectors-is-reference", "output-dangling-symlink", "output-wrong-suffix", "output-new-directory-failed-run",
]
#: Cases that import torch and load the model (or start Dask) before they fail: seconds each, not a fraction.
SLOW = {"card-colour-out-of-range", "geotiff-broken-tile", "geotiff-float64-overflow", "geotiff-reference-crs",
        "geotiff-reference-grid", "nifti-float64-overflow", "nifti-gzip-crc", "nifti-inf", "nifti-nan",
        "nifti-slope-overflow", "nifti-truncated-gzip", "option-chunk-size-one", "option-raster-too-big",
        "output-new-directory-failed-run", "weights-checksum", "weights-dev-zero", "weights-not-torch",
        "weights-pickle-code", "weights-truncated", "workdir-under-file"}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: Cases run at once: most of a run is interpreter and torch start-up, cluster start and waiting.
PARALLEL = 3

Corpus = tuple[Path, dict[str, Case]]
Run = tuple[dict[str, str], Outcome, dict[str, str]]  #: snapshot before, outcome, snapshot after


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    dest = tmp_path_factory.mktemp("badinputs")
    cases = {case.name: case for case in make_corpus(dest)}
    yield dest.resolve(), cases
    (dest / "output-dir-readonly" / "ro").chmod(0o755)  # so the directory can be removed
    shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(corpus: Corpus, request: pytest.FixtureRequest) -> dict[str, Run]:
    """The selected cases through the CLI, :data:`PARALLEL` at a time, with their directory's snapshot
    before and after (``-m "not slow"`` or ``-k`` run only what they select)."""
    dest, cases = corpus
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "module", None) is request.module
                and getattr(item, "originalname", "") == "test_bad_input"}

    def run(case: Case) -> Run:
        before = snapshot(dest / case.name)
        outcome = run_case(case)
        return before, outcome, snapshot(dest / case.name)

    models = snapshot(dest / "_models")
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(run, case) for name, case in cases.items()
                   if name in selected and not (case.root_ignores and IS_ROOT)}
        done = {name: future.result() for name, future in futures.items()}
    assert snapshot(dest / "_models") == models  # the shared cards and weights are untouched too
    return done


def test_case_names_match_the_generator(corpus: Corpus) -> None:
    _, cases = corpus
    assert list(cases) == CASE_NAMES
    assert len(cases) >= 20
    areas = {case.area for case in cases.values()}
    assert {"nifti", "geotiff", "card", "weights", "catalog", "output", "option"} <= areas


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASE_NAMES])
def test_bad_input(name: str, corpus: Corpus, runs: dict[str, Run]) -> None:
    dest, cases = corpus
    case = cases[name]
    if case.root_ignores and IS_ROOT:
        pytest.skip("root ignores permission bits; output-under-file covers an unwritable output as root")
    before, outcome, after = runs[name]

    report = f"exit {outcome.exit_code}\nstderr:\n{outcome.stderr}\nstdout:\n{outcome.stdout[-2000:]}"
    assert outcome.exit_code == case.exit_code, report
    line = message_line(case, outcome)
    assert line is not None, report
    assert case.message in line, report
    assert case.names in line, report  # the message names the file
    assert "Traceback" not in outcome.stderr + outcome.stdout, report
    assert not any(" - ERROR - " in x or x.startswith(("ERROR", "CRITICAL")) for x in outcome.lines), report
    if case.exit_code:
        assert len([x for x in outcome.lines if x.startswith("error:")]) == 1, report
        assert not [x for x in outcome.lines if x != line and not x.startswith(("INFO", "WARNING"))], report
    assert after == before  # inputs byte-identical; no output, work store, lock or temp file
    if case.marker:
        assert not (dest / name / MARKER).exists(), "the payload ran"


def test_debug_shows_the_traceback(corpus: Corpus) -> None:
    _, cases = corpus
    case = cases["nifti-4d"]
    outcome = run_case(case, debug=True)
    assert outcome.exit_code != 0
    assert "Traceback (most recent call last)" in outcome.stderr
    assert "InputError" in outcome.stderr
    assert "image is 4D" in outcome.stderr
