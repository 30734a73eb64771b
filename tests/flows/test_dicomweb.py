"""The DICOMweb client against a real Orthanc: find, retrieve and store a SEG; the failures a PACS gives."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from pipeline.errors import InputError, OutputError, RemoteError, SettingsError
from pipeline.io.dicom import open_series
from pipeline.io.dicom_seg import write_dicom_seg
from pipeline.io.dicomweb import DicomWeb, SeriesRef, multipart_parts
from pipeline.model.models import load_model
from tests.dicom.conftest import reoriented, sample_ct  # noqa: F401  (fixture)
from tests.dicom.series import write_series
from tests.flows.orthanc_server import PASSWORD, USER, Orthanc, orthanc  # noqa: F401  (fixture)
from tests.flows.prefect_server import free_port


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("TEST_PACS_USER", USER)
    monkeypatch.setenv("TEST_PACS_PASSWORD", PASSWORD)
    return {"username_env": "TEST_PACS_USER", "password_env": "TEST_PACS_PASSWORD"}


@pytest.mark.slow
def test_find_retrieve_store(orthanc: Orthanc, sample_ct: nib.Nifti1Image, tmp_path: Path,  # noqa: F811
                             credentials: dict[str, str]) -> None:
    image = reoriented(sample_ct, "LPS")
    files = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "ct")
    orthanc.upload(files)
    pacs = DicomWeb(orthanc.dicomweb, **credentials)
    found = pacs.find_series({"Modality": "CT"})
    assert [(s.modality, s.instances) for s in found] == [("CT", 30)]
    assert pacs.find_series({"Modality": "MR"}) == []
    paths = pacs.retrieve_series(found[0], tmp_path / "retrieved")
    assert len(paths) == 30
    series = open_series(tmp_path / "retrieved")
    assert series.series_uid == found[0].series_uid
    labels = np.zeros(series.geometry.shape, dtype=np.uint8)
    labels[20:40, 30:50, 5:12] = 1
    seg = write_dicom_seg(labels, series, load_model("ct-organs"), tmp_path / "seg.dcm")
    pacs.store([seg.path])
    stored = [s for s in pacs.find_series({"Modality": "SEG"})]
    assert len(stored) == 1
    assert stored[0].study_uid == found[0].study_uid
    seg_uid = dcmread(seg.path).SOPInstanceUID
    back = pacs.retrieve_series(stored[0], tmp_path / "seg-back")
    assert dcmread(back[0]).SOPInstanceUID == seg_uid
    assert dcmread(back[0]).ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid


@pytest.mark.slow
def test_pacs_failures(orthanc: Orthanc, tmp_path: Path, credentials: dict[str, str]) -> None:  # noqa: F811
    with pytest.raises(RemoteError, match="ConnectError"):
        DicomWeb(f"http://127.0.0.1:{free_port()}/dicom-web").find_series()
    with pytest.raises(InputError, match="HTTP 401"):
        DicomWeb(orthanc.dicomweb).find_series()  # no credentials
    with pytest.raises(SettingsError, match="environment variable NOT_SET_ANYWHERE is not set"):
        DicomWeb(orthanc.dicomweb, username_env="NOT_SET_ANYWHERE").find_series()
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(OutputError, match=r"STOW-RS /studies: HTTP 400 \(\{"):
        DicomWeb(orthanc.dicomweb, **credentials).store([tmp_path / "junk.dcm"])
    with pytest.raises(InputError, match=r"series 1\.2\.3\.4 has no instances on the server"):
        DicomWeb(orthanc.dicomweb, **credentials).retrieve_series(SeriesRef("1.2.3", "1.2.3.4"), tmp_path / "none")


def test_multipart_parts() -> None:
    part = b"--b1\r\nContent-Type: application/dicom\r\n\r\n"
    body = part + b"AAA\r\n" + part + b"B\r\n--b1--\r\n"
    assert list(multipart_parts('multipart/related; type="application/dicom"; boundary=b1', body)) == [b"AAA", b"B"]
    with pytest.raises(InputError, match="not multipart"):
        list(multipart_parts("application/json", b"{}"))
