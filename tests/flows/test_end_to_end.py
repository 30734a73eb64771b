"""End to end: a real Prefect server, ``python -m flows.serve``, two triggered runs of the deployment.

One scenario, run once per module by :func:`served_runs`: copies of the real sample CT (with a
reference on its grid) and MR, a text file named ``broken.nii.gz``, and a GeoTIFF when
``pipeline.segment.raster`` exists; an untrained seeded model per kind; a 1-worker LocalCluster.
The tests below check its parts. Every subprocess is killed in teardown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from pipeline.io.hashing import sha256_file
from tests.factories import make_card, write_nifti
from tests.flows.conftest import write_catalog
from tests.flows.prefect_server import DEPLOYMENT, free_port, health, start, stop, trigger, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HAS_GEO = importlib.util.find_spec("pipeline.segment.raster") is not None


@dataclass
class Scenario:
    root: Path
    api_url: str
    env: dict[str, str]
    first: Any  #: FlowRun
    second: Any
    first_table: list[dict[str, Any]]
    second_table: list[dict[str, Any]]
    markdown: str
    manifests_after_first: dict[str, bytes]
    logs: list[str]  #: the first run's log messages, as the UI shows them


def make_inputs(root: Path, data_dir: Path) -> Path:
    """Scans, a reference on the CT's grid, untrained cards and the catalog; returns the catalog path."""
    ct_dir, refs, models = root / "scans" / "ct", root / "refs", root / "models"
    for d in (ct_dir, refs, models):
        d.mkdir(parents=True)
    shutil.copy(data_dir / "medical" / "example_ct_sm.nii.gz", ct_dir / "ct.nii.gz")
    shutil.copy(data_dir / "medical" / "example_mr_sm.nii.gz", ct_dir / "mr.nii.gz")
    (ct_dir / "broken.nii.gz").write_text("this is not a NIfTI file\n")
    ct: Any = nib.load(ct_dir / "ct.nii.gz")
    labels = np.digitize(np.asanyarray(ct.dataobj), [-300, 150]).astype(np.uint8)  # air/fat, soft tissue, bone
    write_nifti(refs / "ct_ref.nii.gz", labels, ct.affine)  # the CT's grid, the model's 3 label values
    make_card(models, name="tiny-ct", n_labels=3, roi_size=(32, 32, 16))
    sources: list[dict[str, Any]] = [
        {"name": "ct", "kind": "medical", "directory": "scans/ct", "glob": "*.nii.gz", "model": "models/tiny-ct.yaml",
         "reference": {"directory": "refs", "name": "{stem}_ref.nii.gz"}}]
    if HAS_GEO:
        geo_dir = root / "scans" / "geo"
        geo_dir.mkdir(parents=True)
        shutil.copy(data_dir / "geo" / "sample_geotiff.tif", geo_dir / "scene.tif")
        shutil.copy(data_dir / "geo" / "geotiff_labels.geojson", geo_dir / "scene_labels.geojson")
        make_card(models, name="tiny-geo", spatial_dims=2, n_labels=2, roi_size=(128, 128), bands=[1],
                  preprocess={"kind": "window", "a_min": 0, "a_max": 1250})
        sources.append({"name": "buildings", "kind": "geo", "directory": "scans/geo", "glob": "*.tif",
                        "model": "models/tiny-geo.yaml", "bands": [1], "vectors": "geojson",
                        "reference": {"name": "{stem}_labels.geojson"}})
    return write_catalog(root, sources, cluster={"workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB"},
                         schedule={"cron": "30 3 * * *", "timezone": "Europe/Berlin"})


def read_table(client: Any, flow_run_id: Any) -> tuple[list[dict[str, Any]], str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    in_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    found = client.read_artifacts(artifact_filter=in_run)
    by_key = {a.key: a.data for a in found}
    table = by_key["segment-new-scans"]
    return (json.loads(table) if isinstance(table, str) else table), by_key["segment-new-scans-reports"]


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Scenario]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("e2e")
    catalog = make_inputs(root, data_dir)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        server_log, serve_log = root / "server.log", root / "serve.log"
        server = start([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                        "--port", str(port)], env, server_log)
        processes.append(server)
        wait_for("the Prefect server", lambda: health(api_url), 150, alive=server, log=server_log)
        serve = start([sys.executable, "-m", "flows.serve", "--catalog", str(catalog)], env, serve_log)
        processes.append(serve)
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            deployment = wait_for("the deployment", lambda: client.read_deployment_by_name(DEPLOYMENT), 120,
                                  alive=serve, log=serve_log)
            assert [s.schedule.cron for s in deployment.schedules] == ["30 3 * * *"]
            assert deployment.schedules[0].schedule.timezone == "Europe/Berlin"
            assert deployment.parameters == {"catalog": str(catalog)}

            def finished(run_id: uuid.UUID) -> Any:
                run = client.read_flow_run(run_id)
                return run if run.state is not None and run.state.is_final() else None

            first_id = trigger(env)
            first = wait_for("the first flow run", lambda: finished(first_id), 300, alive=serve, log=serve_log)
            manifests = {p.name: p.read_bytes() for p in (root / "out").rglob("*.manifest.json")}
            second_id = trigger(env)
            second = wait_for("the second flow run", lambda: finished(second_id), 180, alive=serve, log=serve_log)
            first_table, markdown = read_table(client, first.id)
            second_table, _ = read_table(client, second.id)
            logs = [log.message for log in client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[first.id])))]
        yield Scenario(root=root, api_url=api_url, env=env, first=first, second=second, first_table=first_table,
                       second_table=second_table, markdown=markdown, manifests_after_first=manifests, logs=logs)
    finally:
        for process in reversed(processes):
            stop(process)


def test_first_run_segments_new_scans_on_their_grid(served_runs: Scenario) -> None:
    s = served_runs
    assert s.first.state.is_completed(), f"{s.first.state.message}\n{(s.root / 'serve.log').read_text()[-3000:]}"
    out = s.root / "out" / "ct"
    for name in ("ct", "mr"):
        scan: Any = nib.load(s.root / "scans" / "ct" / f"{name}.nii.gz")
        mask: Any = nib.load(out / f"{name}_seg.nii.gz")
        assert mask.shape == scan.shape
        assert np.allclose(mask.affine, scan.affine, atol=1e-5)
        manifest = json.loads((out / f"{name}_seg.manifest.json").read_text())
        assert manifest["status"] == "done"
        assert manifest["model"] == "tiny-ct"
        assert manifest["input"]["sha256"] == sha256_file(s.root / "scans" / "ct" / f"{name}.nii.gz")
        assert manifest["model_sha256"] == sha256_file(s.root / "models" / "tiny-ct.pt")
        assert all(Path(p).exists() for p in manifest["outputs"].values())
    broken = json.loads((out / "broken_seg.manifest.json").read_text())
    assert broken["status"] == "failed"
    assert "not a readable NIfTI file" in broken["reason"]
    assert not (out / "broken_seg.nii.gz").exists()
    assert not list((s.root / "out").rglob("*.partial"))
    assert not list((s.root / "out").rglob(".*.lock"))
    assert any(m.startswith("segmenting ") and m.endswith("ct_seg.nii.gz") for m in s.logs)  # library logs reach the UI


def test_table_artifact_matches_the_reports(served_runs: Scenario) -> None:
    rows = served_runs.first_table
    status = {Path(r["scan"]).name: r["status"] for r in rows}
    assert status["ct.nii.gz"] == status["mr.nii.gz"] == "done"
    assert status["broken.nii.gz"] == "failed"
    [broken] = [r for r in rows if Path(r["scan"]).name == "broken.nii.gz"]
    assert "not a readable NIfTI file" in broken["reason"]
    report = json.loads((served_runs.root / "out" / "ct" / "ct_seg.report.json").read_text())
    ct_rows = {r["label"]: r for r in rows if Path(r["scan"]).name == "ct.nii.gz"}
    assert {name: row["dice"] for name, row in ct_rows.items()} == {r["name"]: r["dice"] for r in report["labels"]}
    volumes = {r["name"]: r["volume_ml"] for r in report["labels"]}
    assert {name: row["volume_ml"] for name, row in ct_rows.items()} == volumes
    assert all(row["dice"] is not None and row["seconds"] > 0 for row in ct_rows.values())
    assert all(r["dice"] is None for r in rows if Path(r["scan"]).name == "mr.nii.gz")  # no reference
    assert "ct_seg.report.json](file://" in served_runs.markdown


def test_second_run_processes_nothing(served_runs: Scenario) -> None:
    s = served_runs
    assert s.second.state.is_completed()
    assert {r["status"] for r in s.second_table} == {"failed-before"}  # the bad file, reported, not retried
    after = {p.name: p.read_bytes() for p in (s.root / "out").rglob("*.manifest.json")}
    assert after == s.manifests_after_first


def test_geotiff_source(served_runs: Scenario) -> None:
    import rasterio

    s = served_runs
    out = s.root / "out" / "buildings"
    with rasterio.open(s.root / "scans" / "geo" / "scene.tif") as scene, rasterio.open(out / "scene_seg.tif") as mask:
        assert (mask.height, mask.width) == (scene.height, scene.width)
        assert mask.transform == scene.transform
        assert mask.crs == scene.crs
    manifest = json.loads((out / "scene_seg.manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["model"] == "tiny-geo"
    assert manifest["outputs"]["vectors"] == str(out / "scene_seg.geojson")
    assert (out / "scene_seg.geojson").exists()
    report = json.loads(Path(manifest["outputs"]["report_json"]).read_text())
    assert report["reference"] == str(s.root / "scans" / "geo" / "scene_labels.geojson")
    rows = {r["label"]: r for r in s.first_table if Path(r["scan"]).name == "scene.tif"}
    assert {name: row["dice"] for name, row in rows.items()} == {r["name"]: r["dice"] for r in report["labels"]}
    assert {name: row["area_ha"] for name, row in rows.items()} == {r["name"]: r["area_ha"] for r in report["labels"]}
    assert all(row["dice"] is not None and row["status"] == "done" for row in rows.values())
