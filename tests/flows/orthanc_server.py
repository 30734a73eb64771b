"""A real Orthanc (Debian's, with its DICOMweb plugin) on loopback, with a temporary storage and config.

Started like the Prefect server of :mod:`tests.flows.prefect_server`: a subprocess in its own process
group, waited for, stopped at teardown. HTTP basic authentication is on, so the credentials travel
through environment variables as a user's would.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.flows.prefect_server import free_port, start, stop, wait_for
from tests.report.conftest import require

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "volseg", "orthanc-test-secret"


@dataclass(frozen=True)
class Orthanc:
    url: str  #: the REST root, e.g. http://127.0.0.1:PORT

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def raw(self, path: str) -> bytes:
        """GET a REST path's bytes (``/instances/<id>/file``)."""
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": basic_auth()})
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def get(self, path: str) -> object:
        """GET a REST path (``/series``), decoded from JSON."""
        return json.loads(self.raw(path))

    def upload(self, files: list[Path]) -> None:
        """POST instances through the REST API (as a modality or an import tool would put them)."""
        for f in files:
            headers = {"Authorization": basic_auth(), "Content-Type": "application/dicom"}
            request = urllib.request.Request(f"{self.url}/instances", data=f.read_bytes(), headers=headers)
            with urllib.request.urlopen(request, timeout=30):
                pass


def basic_auth() -> str:
    return "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def orthanc_binary() -> str:
    tool = shutil.which("Orthanc") or (shutil.which("Orthanc", path="/usr/sbin"))
    require(tool is not None and PLUGIN.is_file(), "Orthanc with its DICOMweb plugin (orthanc, orthanc-dicomweb)")
    return str(tool)


def serve_orthanc(directory: Path) -> Iterator[Orthanc]:
    """Start Orthanc with storage under ``directory``; yield it; stop it."""
    binary = orthanc_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "volseg-test", "StorageDirectory": str(directory / "db"), "IndexDirectory": str(directory / "db"),
        "HttpPort": port, "RemoteAccessAllowed": False, "DicomServerEnabled": False, "DicomPort": free_port(),
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "HttpsVerifyPeers": False, "StableAge": 1,
    }
    (directory / "orthanc.json").write_text(json.dumps(config))
    log = directory / "orthanc.log"
    process = start([binary, str(directory / "orthanc.json")], {"PATH": "/usr/bin:/bin"}, log)
    server = Orthanc(f"http://127.0.0.1:{port}")
    try:
        wait_for("orthanc", lambda: server.get("/system"), 60, alive=process, log=log)
        yield server
    finally:
        stop(process)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh, empty Orthanc for one test."""
    yield from serve_orthanc(tmp_path / "orthanc")
