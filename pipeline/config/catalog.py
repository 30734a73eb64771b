"""The data catalog: the one file that says which scans are segmented, with which model, and where to.

``data_catalog.yaml`` is read with ``yaml.safe_load`` and validated here, so a bad catalog fails
with one line naming the file and the key (``data_catalog.yaml: sources.0.kind: ...``), as model
cards do. Relative paths resolve against the catalog file's directory, never the working directory,
so a deployment behaves the same wherever it is started. Outputs go to
``<output_root>/<source output>/<path under the source directory>/<stem>_seg<suffix>`` and can never
leave ``output_root`` (``..``, absolute paths and symlinks pointing outside are refused).

Nothing here reads a scan or a model: :mod:`pipeline.batch.discovery` decides what to run.
"""

from __future__ import annotations

import difflib
import logging
import os
import string
from pathlib import Path, PurePath
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.config.choices import VECTOR_SUFFIXES, check_choice
from pipeline.config.cluster import ClusterConfig
from pipeline.config.schedule import Schedule
from pipeline.config.segmenters import SEGMENTERS, Segmenter
from pipeline.config.training_data import TrainingDataset
from pipeline.config.yamlfile import read_mapping, resolve_relative
from pipeline.errors import CatalogError, OutputError

logger = logging.getLogger(__name__)


Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]


def _relative_parts(value: str, what: str) -> str:
    """Refuse absolute paths and ``..``: what the value names must stay under its root."""
    path = PurePath(value)
    if path.is_absolute() or value.startswith(("/", "\\", "~")):
        raise ValueError(f"{what} must be relative, got {value!r}")
    if ".." in path.parts or ".." in value.replace("\\", "/").split("/"):
        raise ValueError(f"{what} must not contain '..', got {value!r}")
    return value


class NamingRule(BaseModel):
    """Where a scan's reference is: ``directory / name.format(stem=...)`` (a mask; for geo also vectors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    directory: Path | None = Field(default=None, description="default: the scan's own directory")
    name: str = Field(description="file name, with {stem} for the scan's name without suffix, e.g. '{stem}_ref.nii.gz'")

    @field_validator("directory")
    @classmethod
    def _anchor(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_relative(value, info)

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        fields = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
        if fields - {"stem"}:
            raise ValueError(f"only {{stem}} may be substituted, got {sorted(fields - {'stem'})} in {value!r}")
        if "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError(f"must be a file name without directories, got {value!r}")
        return value

    def path_for(self, scan: Path, stem: str) -> Path:
        return (self.directory or scan.parent) / self.name.format(stem=stem)


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class DicomWebConfig(BaseModel):
    """A PACS over DICOMweb: base URL, QIDO-RS filters, and the *names* of environment variables holding the
    credentials (never the credentials: a catalog is checked in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(pattern=r"^https?://[^\s]+$", description="DICOMweb base URL, e.g. http://pacs:8042/dicom-web")
    filters: dict[str, str] = Field(default_factory=dict, description="QIDO-RS series filters, e.g. "
                                    "{Modality: CT, StudyDate: 20260101-}")
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    token_env: EnvName | None = Field(default=None, description="a bearer token instead of basic authentication")


class Source(BaseModel):
    """One directory of inputs (or, kind ``dicomweb``, one PACS), all of one kind, all segmented with one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Name
    kind: str
    directory: Path | None = Field(default=None, description="required except for kind dicomweb")
    dicomweb: DicomWebConfig | None = Field(default=None, description="kind dicomweb only: the PACS")
    glob: str = "*"
    model: str = Field(min_length=1, description="model card name (models/), or a card path or MONAI bundle "
                       "directory relative to the catalog")
    reference: NamingRule | None = None
    vectors: str | None = Field(default=None, description="geo only: also write polygons, as 'gpkg' or 'geojson'")
    bands: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(default=None, description="geo only: 1-based")
    output: str | None = Field(default=None, description="directory under output_root; default: the source name")
    trust: bool = Field(default=False, description="the model is a MONAI bundle whose config may run code beyond "
                        "monai classes and harmless expressions (see pipeline.model.bundles); "
                        "only for code you would run")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return check_choice("kind", value, SEGMENTERS)

    @field_validator("directory")
    @classmethod
    def _anchor(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_relative(value, info)

    @field_validator("glob")
    @classmethod
    def _relative_glob(cls, value: str) -> str:
        return _relative_parts(value, "glob")

    @field_validator("model")
    @classmethod
    def _model_path(cls, value: str, info: ValidationInfo) -> str:
        """A card path (``*.yaml`` or containing ``/``) is anchored at the catalog; a name is looked up later."""
        if value.endswith((".yaml", ".yml")) or "/" in value:
            return str(resolve_relative(Path(value), info))
        return value

    @field_validator("vectors")
    @classmethod
    def _vector_format(cls, value: str | None) -> str | None:
        choices = [suffix.removeprefix(".") for suffix in VECTOR_SUFFIXES]
        return None if value is None else check_choice("vector format", value, choices)

    @field_validator("output")
    @classmethod
    def _relative_output(cls, value: str | None) -> str | None:
        return None if value is None else _relative_parts(value, "output")

    @model_validator(mode="after")
    def _options_fit_kind(self) -> Source:
        allowed = SEGMENTERS[self.kind].options
        for key, kind in (("bands", "geo"), ("vectors", "geo"), ("dicomweb", "dicomweb")):
            if getattr(self, key) is not None and key not in allowed:
                raise ValueError(f"{key} is only valid for kind {kind!r}, not {self.kind!r}")
        if self.kind == "dicomweb" and self.dicomweb is None:
            raise ValueError("kind 'dicomweb' needs a dicomweb section (url, filters, credentials' variable names)")
        if self.kind != "dicomweb" and self.directory is None:
            raise ValueError(f"kind {self.kind!r} needs a directory")
        if self.kind == "dicomweb" and self.reference is not None and self.reference.directory is None:
            raise ValueError("reference: a dicomweb source's references need a directory ({stem} is the series UID)")
        return self

    @property
    def segmenter(self) -> Segmenter:
        return SEGMENTERS[self.kind]

    @property
    def pacs_source(self) -> bool:
        """Its inputs are series on a PACS (kind ``dicomweb``), not files under ``directory``."""
        return self.dicomweb is not None

    @property
    def output_name(self) -> str:
        return self.output or self.name


class Catalog(BaseModel):
    """What is processed (sources), where results go (output_root), how (cluster) and when (schedule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sources: list[Source] = Field(min_length=1)
    output_root: Path
    work_root: Path | None = Field(default=None, description="Zarr work stores; default <output_root>/.work")
    cluster: ClusterConfig = ClusterConfig()
    schedule: Schedule | None = None
    datasets: dict[Name, TrainingDataset] = Field(default_factory=dict, description="for pipeline train")
    _file: Path = PrivateAttr(default=Path("data_catalog.yaml"))

    @field_validator("output_root", "work_root")
    @classmethod
    def _anchor(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_relative(value, info)

    @model_validator(mode="after")
    def _unique_and_contained(self) -> Catalog:
        root = self.output_root.resolve()
        names: set[str] = set()
        outputs: dict[Path, str] = {}
        for i, source in enumerate(self.sources):
            if source.name in names:
                raise ValueError(f"sources.{i}.name: duplicate source name {source.name!r}")
            names.add(source.name)
            target = (self.output_root / source.output_name).resolve()
            if not target.is_relative_to(root) or target == root:
                raise ValueError(f"sources.{i}.output: {source.output_name!r} resolves to {target}, "
                                 f"outside the output root {root} (a symlink?)")
            if target in outputs:
                raise ValueError(f"sources.{i}.output: {target} is also the output of source {outputs[target]!r}")
            outputs[target] = source.name
        return self

    @property
    def file(self) -> Path:
        """The catalog file as it was given to :func:`load_catalog` (used in error messages)."""
        return self._file

    @property
    def work_dir(self) -> Path:
        return self.work_root or self.output_root / ".work"

    def select(self, name: str | None) -> list[tuple[int, Source]]:
        """``(index, source)`` for all sources, or for the one named ``name``."""
        indexed = list(enumerate(self.sources))
        if name is None:
            return indexed
        chosen = [(i, s) for i, s in indexed if s.name == name]
        if not chosen:
            known = [s.name for s in self.sources]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CatalogError(f"{self.file}: no source named {name!r}{hint} (sources: {', '.join(known)})")
        return chosen

    def dataset(self, name: str) -> TrainingDataset:
        """The training dataset called ``name``; a one-line error with a suggestion otherwise."""
        from pipeline.config.choices import unknown_choice

        if name not in self.datasets:
            raise CatalogError(f"{self.file}: {unknown_choice('dataset', name, self.datasets, listing='datasets')}")
        return self.datasets[name]

    def error(self, index: int, key: str, message: str) -> CatalogError:
        """A one-line error about ``sources.<index>.<key>`` of this catalog."""
        return CatalogError(f"{self.file}: sources.{index}.{key}: {message}")

    def output_for(self, source: Source, scan: Path) -> Path:
        """Mask path for ``scan``: mirrors its place under the source directory inside the output root.

        Raises
        ------
        OutputError
            The path would resolve outside ``output_root`` (e.g. through a symlinked directory).
        """
        if source.directory is None:  # kind dicomweb: pipeline.batch.pacs names its outputs
            raise OutputError(f"source {source.name!r} has no directory to mirror")
        relative = scan.relative_to(source.directory)
        name = source.segmenter.stem(scan.name) + "_seg" + source.segmenter.output_suffix
        output = self.output_root / source.output_name / relative.parent / name
        root = self.output_root.resolve()
        if not output.resolve().is_relative_to(root):
            raise OutputError(f"{output}: resolves to {output.resolve()}, outside the output root {root}; "
                              "remove the symlink or change output_root")
        return output


def _describe(error: ValidationError) -> str:
    """Pydantic's errors as ``key: message``, the way ``pipeline.config.cards`` reports card errors."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read and validate a data catalog; relative paths inside resolve against its directory.

    Raises
    ------
    CatalogError
        The file is missing, not YAML, uses non-safe tags (``!!python/object``), or fails validation.
        The message is one line: ``<file>: <key>: <what is wrong>``.
    """
    path = Path(path)
    data = read_mapping(path, "data catalog", CatalogError)
    try:
        catalog = Catalog.model_validate(data, context={"base": path.resolve().parent})
    except ValidationError as e:
        raise CatalogError(f"{path}: {_describe(e)}") from e
    catalog._file = path
    return catalog
