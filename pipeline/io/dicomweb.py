"""A DICOMweb client for a PACS: QIDO-RS to find series, WADO-RS to retrieve them, STOW-RS to store a SEG.

Only the standard's plain JSON and ``multipart/related; type="application/dicom"`` are used, so any
DICOMweb server works (Orthanc's plugin, dcm4chee, Google/Azure health APIs). Credentials come from
environment variables named by the caller, never from a file. Retrieval writes one instance at a time
to disk (a series is never held in memory). An unreachable server, a timeout or a 5xx is a
:class:`~pipeline.errors.RemoteError` (worth retrying); a 4xx or a STOW failure list is an
:class:`~pipeline.errors.OutputError` / :class:`~pipeline.errors.InputError` naming the server's reason.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, OutputError, RemoteError, SettingsError

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
#: DICOM JSON tags of the attributes the client reads.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, DESCRIPTION, COUNT = "00080060", "0008103E", "00201209"
FAILED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081197"


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """One series on the server, as QIDO-RS describes it."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    instances: int | None = None


@dataclass(frozen=True)
class DicomWeb:
    """A DICOMweb endpoint: base URL (e.g. ``http://pacs:8042/dicom-web``) and optional credentials, named as
    environment variables (``username_env``/``password_env`` for HTTP basic, ``token_env`` for a bearer token)."""

    url: str
    username_env: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    timeout: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)

    def _client(self) -> Any:
        import httpx

        auth, headers = None, dict(self.headers)
        if self.token_env:
            headers["Authorization"] = f"Bearer {_env(self.token_env)}"
        elif self.username_env:
            auth = (_env(self.username_env), _env(self.password_env) if self.password_env else "")
        return httpx.Client(base_url=self.url.rstrip("/"), auth=auth, headers=headers, timeout=self.timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            with self._client() as client:
                response = client.request(method, path, **kwargs)
        except httpx.HTTPError as e:  # connection refused, DNS, timeout
            raise RemoteError(f"{self.url}: {type(e).__name__}: {e}") from e
        if response.status_code >= 500:
            raise RemoteError(f"{self.url}{path}: HTTP {response.status_code} {response.reason_phrase}")
        return response

    def find_series(self, filters: Mapping[str, str] | None = None) -> list[SeriesRef]:
        """Series matching QIDO-RS ``filters`` (``{"Modality": "CT", "StudyDate": "20260101-"}``)."""
        params = {**(filters or {}), "includefield": f"{MODALITY},{DESCRIPTION},{COUNT}"}
        response = self._request("GET", "/series", params=params, headers={"Accept": DICOM_JSON})
        _refused(self.url, response, "QIDO-RS /series", InputError)
        return [_series_ref(item) for item in (response.json() if response.content else [])]

    def instance_uids(self, series: SeriesRef) -> list[str]:
        path = f"/studies/{series.study_uid}/series/{series.series_uid}/instances"
        response = self._request("GET", path, headers={"Accept": DICOM_JSON})
        _refused(self.url, response, f"QIDO-RS {path}", InputError)
        return [_value(item, SOP_UID) for item in (response.json() if response.content else [])]

    def retrieve_series(self, series: SeriesRef, folder: Path) -> list[Path]:
        """WADO-RS: every instance of ``series`` into ``folder`` (one file per instance, one at a time)."""
        uids = self.instance_uids(series)
        if not uids:
            raise InputError(f"{self.url}: series {series.series_uid} has no instances on the server")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for uid in uids:
            path = f"/studies/{series.study_uid}/series/{series.series_uid}/instances/{uid}"
            response = self._request("GET", path, headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"})
            _refused(self.url, response, f"WADO-RS {path}", InputError)
            for n, part in enumerate(multipart_parts(response.headers.get("content-type", ""), response.content)):
                target = folder / f"{uid}{'' if n == 0 else f'.{n}'}.dcm"
                target.write_bytes(part)
                paths.append(target)
        return paths

    def store(self, files: list[Path]) -> None:
        """STOW-RS the instances in ``files`` (a SEG); refused or partly failed stores are an OutputError."""
        boundary = uuid.uuid4().hex
        body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f.read_bytes()
                        + b"\r\n" for f in files) + b"--" + boundary.encode() + b"--\r\n"
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        response = self._request("POST", "/studies", content=body,
                                 headers={"Content-Type": content_type, "Accept": DICOM_JSON})
        _refused(self.url, response, "STOW-RS /studies", OutputError)
        failed = (response.json() if response.content else {}).get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
        if failed:
            reason = failed[0].get(FAILURE_REASON, {}).get("Value", ["?"])[0]
            raise OutputError(f"{self.url}: the PACS refused {len(failed)} instance(s) (failure reason {reason})")


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise SettingsError(f"environment variable {name} is not set (DICOMweb credentials)")
    return value


def _refused(url: str, response: Any, what: str, error: type[Exception]) -> None:
    if response.status_code >= 400:
        text = " ".join(response.text.split())[:200] or response.reason_phrase  # one line, however the server wraps it
        raise error(f"{url}: {what}: HTTP {response.status_code} ({text})")


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _series_ref(item: Mapping[str, Any]) -> SeriesRef:
    count = _value(item, COUNT)
    return SeriesRef(study_uid=_value(item, STUDY_UID), series_uid=_value(item, SERIES_UID),
                     modality=_value(item, MODALITY), description=_value(item, DESCRIPTION),
                     instances=int(count) if count.isdigit() else None)


def multipart_parts(content_type: str, body: bytes) -> Iterator[bytes]:
    """The bodies of a ``multipart/related`` response (RFC 2046), in order.

    Raises
    ------
    InputError
        The response is not multipart or has no boundary.
    """
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"')
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise InputError(f"DICOMweb response is not multipart ({content_type or 'no content type'})")
    delimiter = b"--" + boundary.encode()
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            return
        _, _, data = chunk.partition(b"\r\n\r\n")  # part headers, blank line, body
        yield data[:-2] if data.endswith(b"\r\n") else data
