"""A catalog source of kind dicomweb against a real Orthanc: find, retrieve, segment, store the SEG, idempotently;
then the deployment itself, run with ``prefect deployment run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from pipeline.batch.discovery import discover
from pipeline.batch.jobs import ScanStatus
from pipeline.batch.scan_run import run_scan
from pipeline.config.catalog import load_catalog
from pipeline.errors import CatalogError
from tests.dicom.conftest import dciodvfy, reoriented, sample_ct, sample_ref  # noqa: F401  (fixtures)
from tests.dicom.series import write_series
from tests.factories import make_card
from tests.flows.conftest import write_catalog
from tests.flows.orthanc_server import PASSWORD, USER, Orthanc, orthanc  # noqa: F401  (fixture)
from tests.flows.prefect_server import DEPLOYMENT, free_port, health, start, stop, trigger, wait_for

pytestmark = pytest.mark.slow
ENV = {"TEST_PACS_USER": USER, "TEST_PACS_PASSWORD": PASSWORD}


def pacs_catalog(root: Path, url: str, **source: Any) -> Path:
    (root / "models").mkdir(parents=True, exist_ok=True)
    make_card(root / "models", name="tiny-ct", n_labels=6, roi_size=(32, 32, 16))
    pacs = {"url": url, "filters": {"Modality": "CT"}, "username_env": "TEST_PACS_USER",
            "password_env": "TEST_PACS_PASSWORD"}
    return write_catalog(root, [{"name": "pacs", "kind": "dicomweb", "dicomweb": pacs, "model": "models/tiny-ct.yaml",
                                 **source}], cluster={"workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB"})


def upload_ct(pacs: Orthanc, image: nib.Nifti1Image, folder: Path, slices: int | None = None) -> str:
    data = np.asarray(image.dataobj)[:, :, :slices]
    files = write_series(data, image.affine, folder)
    pacs.upload(files)
    return str(dcmread(files[0]).SeriesInstanceUID)


def seg_instances(pacs: Orthanc) -> list[Any]:
    """Every SEG instance the PACS holds, read back through its REST API."""
    import io

    found = []
    for series in pacs.get("/series?expand"):  # type: ignore[union-attr]
        if series["MainDicomTags"].get("Modality") == "SEG":
            found += [dcmread(io.BytesIO(pacs.raw(f"/instances/{i}/file"))) for i in series["Instances"]]
    return found


def test_catalog_dicomweb_keys(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, [{"name": "p", "kind": "dicomweb", "model": "ct-organs"}])
    with pytest.raises(CatalogError, match="kind 'dicomweb' needs a dicomweb section"):
        load_catalog(path)
    path = write_catalog(tmp_path, [{"name": "p", "kind": "dicomweb", "model": "ct-organs",
                                     "dicomweb": {"url": "http://x/dicom-web", "password_env": "not a name"}}])
    with pytest.raises(CatalogError, match=r"sources.0.dicomweb.password_env: String should match pattern"):
        load_catalog(path)
    path = write_catalog(tmp_path, [{"name": "p", "kind": "medical", "model": "ct-organs",
                                     "dicomweb": {"url": "http://x/dicom-web"}}])
    with pytest.raises(CatalogError, match="dicomweb is only valid for kind 'dicomweb', not 'medical'"):
        load_catalog(path)


def test_series_found_segmented_stored_once(orthanc: Orthanc, sample_ct: nib.Nifti1Image,  # noqa: F811
                                            sample_ref: nib.Nifti1Image, tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    image = reoriented(sample_ct, "LPS")
    first_uid = upload_ct(orthanc, image, tmp_path / "dcm" / "a")
    (tmp_path / "refs").mkdir()
    nib.save(reoriented(sample_ref, "LPS"), tmp_path / "refs" / f"{first_uid}_ref.nii.gz")
    catalog = load_catalog(pacs_catalog(tmp_path, orthanc.dicomweb,
                                        reference={"directory": "refs", "name": "{stem}_ref.nii.gz"}))
    plan = discover(catalog)
    assert [j.pacs.series_uid for j in plan.pending if j.pacs] == [first_uid]
    outcome = run_scan(plan.pending[0])
    assert outcome.status is ScanStatus.DONE
    assert outcome.scan == f"{orthanc.dicomweb}/studies/{plan.pending[0].pacs.study_uid}/series/{first_uid}"
    assert all(r["dice"] is not None for r in outcome.labels)
    out = tmp_path / "out" / "pacs"
    manifest = json.loads((out / f"{first_uid}_seg.manifest.json").read_text())
    seg = Path(manifest["outputs"]["dicom_seg"])
    assert seg == out / f"{first_uid}_seg.dcm"
    assert dciodvfy(seg) == []
    [stored] = seg_instances(orthanc)
    assert stored.SOPInstanceUID == dcmread(seg).SOPInstanceUID
    assert not (tmp_path / "work" / "pacs" / "dicomweb" / first_uid).exists()  # the retrieved copy is gone
    again = discover(catalog)
    assert again.pending == []
    assert again.up_to_date == 1
    second_uid = upload_ct(orthanc, image, tmp_path / "dcm" / "b", slices=12)
    later = discover(catalog)
    assert [j.pacs.series_uid for j in later.pending if j.pacs] == [second_uid]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """A Prefect server and ``flows.serve`` for a catalog on a live Orthanc (the orthanc fixture's, started here)."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api_url, **ENV,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        server = start([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                        "--port", str(port)], env, tmp_path / "server.log")
        processes.append(server)
        wait_for("the Prefect server", lambda: health(api_url), 150, alive=server, log=tmp_path / "server.log")
        yield env, processes
    finally:
        for process in reversed(processes):
            stop(process)


def test_deployment_run_against_orthanc(served: tuple[dict[str, str], Any], orthanc: Orthanc,  # noqa: F811
                                        sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:  # noqa: F811
    """``prefect deployment run`` twice: the SEG arrives once, referencing the series; a series uploaded later
    is picked up by the next run."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env, processes = served
    pacs = orthanc
    image = reoriented(sample_ct, "LPS")
    uid = upload_ct(pacs, image, tmp_path / "dcm" / "a")
    catalog = pacs_catalog(tmp_path, pacs.dicomweb)
    serve = start([sys.executable, "-m", "flows.serve", "--catalog", str(catalog)], env, tmp_path / "serve.log")
    processes.append(serve)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        wait_for("the deployment", lambda: client.read_deployment_by_name(DEPLOYMENT), 120, alive=serve,
                 log=tmp_path / "serve.log")

        def run_once() -> Any:
            run_id: uuid.UUID = trigger(env)
            def final() -> Any:
                run = client.read_flow_run(run_id)
                return run if run.state is not None and run.state.is_final() else None

            return wait_for("a flow run", final, 300, alive=serve, log=tmp_path / "serve.log")

        first = run_once()
        assert first.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        [seg] = seg_instances(pacs)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        assert run_once().state.is_completed()
        assert len(seg_instances(pacs)) == 1  # the second run stored nothing new
        later = upload_ct(pacs, image, tmp_path / "dcm" / "b", slices=12)
        assert run_once().state.is_completed()
        referenced = sorted(s.ReferencedSeriesSequence[0].SeriesInstanceUID for s in seg_instances(pacs))
        assert referenced == sorted([uid, later])


def test_unreachable_pacs_is_retried_not_failed(orthanc: Orthanc, sample_ct: nib.Nifti1Image,  # noqa: F811
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS goes away between discovery and the scan's turn: no manifest (the next run segments it), the
    outcome is ``retry``, and it is transient (the flow's Prefect retry condition is :func:`is_transient`)."""
    import dataclasses

    from pipeline.batch.jobs import ScanOutcome
    from pipeline.batch.scan_run import is_transient
    from pipeline.errors import RemoteError

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    upload_ct(orthanc, reoriented(sample_ct, "LPS"), tmp_path / "dcm")
    [job] = discover(load_catalog(pacs_catalog(tmp_path, orthanc.dicomweb))).pending
    assert job.pacs is not None
    gone = dataclasses.replace(job, pacs=dataclasses.replace(
        job.pacs, config=job.pacs.config.model_copy(update={"url": f"http://127.0.0.1:{free_port()}/dicom-web"})))
    with pytest.raises(RemoteError, match="ConnectError") as caught:
        run_scan(gone)
    assert not job.manifest_path.exists()
    assert is_transient(caught.value)
    outcome = ScanOutcome.failed(gone, caught.value)
    assert outcome.status is ScanStatus.RETRY
    assert outcome.reason is not None
    assert outcome.reason.startswith("remote: ")
    assert not outcome.user_error
