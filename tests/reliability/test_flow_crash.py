"""Killing the served flow mid-run, then running the deployment again: finished scans are not redone,
the interrupted scan resumes from its finished blocks, and every mask equals a single run's."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.io.hashing import sha256_file
from tests.factories import make_card
from tests.flows.conftest import write_catalog
from tests.flows.prefect_server import DEPLOYMENT, free_port, health, kill_tree, start, stop, trigger, wait_for
from tests.reliability.helpers import finished_blocks, many_block_scan

pytestmark = pytest.mark.slow

NAMES = ("a", "b", "c")


def test_killed_flow_run_resumes_on_the_next_run(tmp_path: Path, client1: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline import segment_volume

    scans = tmp_path / "scans"
    scans.mkdir()
    for seed, name in enumerate(NAMES):
        # big enough that a scan takes seconds (the served flow is polled once a second to kill it mid-run)
        many_block_scan(scans / f"{name}.nii.gz", shape=(224, 224, 96), seed=seed)
    make_card(tmp_path, name="tiny", roi_size=(32, 32, 16))
    catalog = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans",
                                        "glob": "*.nii.gz", "model": "tiny.yaml"}],
                            cluster={"workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB"})
    out, work = tmp_path / "out" / "ct", tmp_path / "work" / "ct"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"})
    serve_args = [sys.executable, "-m", "flows.serve", "--catalog", str(catalog)]
    server = start([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], env, tmp_path / "server.log")
    serve = None
    try:
        wait_for("the Prefect server", lambda: health(api_url), 150, alive=server, log=tmp_path / "server.log")
        serve = start(serve_args, env, tmp_path / "serve1.log")
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            wait_for("the deployment", lambda: client.read_deployment_by_name(DEPLOYMENT), 120, alive=serve,
                     log=tmp_path / "serve1.log")
            trigger(env)

            def mid_run() -> bool | None:
                done = list(out.glob("*.manifest.json"))
                return True if done and len(done) < len(NAMES) and finished_blocks(work) >= 1 else None

            wait_for("one finished scan and one under way", mid_run, 300, alive=serve, log=tmp_path / "serve1.log")
            kill_tree(serve)  # SIGKILL the serve process, its flow run and the run's Dask workers
            before = {p.name: p.read_bytes() for p in out.glob("*.manifest.json")}
            assert 0 < len(before) < len(NAMES)
            interrupted = finished_blocks(work)
            assert interrupted >= 1  # an unfinished scan left finished blocks behind
            serve = start(serve_args, env, tmp_path / "serve2.log")

            def finished(run_id: uuid.UUID) -> Any:
                run = client.read_flow_run(run_id)
                return run if run.state is not None and run.state.is_final() else None

            run_id = trigger(env)
            second = wait_for("the second run", lambda: finished(run_id), 300, alive=serve,
                              log=tmp_path / "serve2.log")
            assert second.state.is_completed(), second.state
    finally:
        for process in (serve, server):
            if process is not None:
                stop(process)

    manifests = {p.name: p.read_bytes() for p in out.glob("*.manifest.json")}
    assert len(manifests) == len(NAMES)
    assert all(manifests[name] == content for name, content in before.items())  # finished scans not redone
    reports = {name: json.loads((out / f"{name}_seg.report.json").read_text()) for name in NAMES}
    assert sum(r["run"]["blocks_resumed"] for r in reports.values()) >= interrupted  # the interrupted ones resumed
    (tmp_path / "single").mkdir()
    for name in NAMES:  # and every mask equals what a single, uninterrupted run makes
        single = segment_volume(scans / f"{name}.nii.gz", model=tmp_path / "tiny.yaml",
                                output=tmp_path / "single" / f"{name}.nii.gz", client=client1)
        assert sha256_file(single.mask) == sha256_file(out / f"{name}_seg.nii.gz"), name
