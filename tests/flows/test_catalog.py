"""The data catalog: valid files load, every bad key gives one line naming the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.batch.discovery import discover
from pipeline.config.catalog import load_catalog
from pipeline.config.segmenters import SEGMENTERS, Segmenter
from pipeline.errors import CatalogError, OutputError, PipelineError
from tests.factories import make_card
from tests.flows.conftest import write_catalog

ROOT = Path(__file__).resolve().parents[2]
SOURCE = {"name": "ct", "kind": "medical", "directory": "scans", "glob": "*.nii.gz", "model": "tiny"}


def test_valid_catalog_resolves_paths_against_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_catalog(tmp_path, [{**SOURCE, "reference": {"directory": "refs", "name": "{stem}_ref.nii.gz"}},
                                    {"name": "geo", "kind": "geo", "directory": "/data/tiles", "model": "m/card.yaml",
                                     "bands": [3, 2, 1], "output": "geo/tiles"}])
    monkeypatch.chdir(ROOT)  # not the catalog's directory: must not matter
    catalog = load_catalog(path)
    ct, geo = catalog.sources
    assert catalog.output_root == tmp_path / "out"
    assert catalog.work_dir == tmp_path / "work"
    assert ct.directory == tmp_path / "scans"
    assert ct.reference is not None
    assert ct.reference.path_for(ct.directory / "x.nii.gz", "x") == tmp_path / "refs" / "x_ref.nii.gz"
    assert geo.directory == Path("/data/tiles")
    assert geo.model == str(tmp_path / "m" / "card.yaml")
    assert ct.model == "tiny"  # a card name is looked up in models/ at discovery
    assert catalog.output_for(geo, Path("/data/tiles/2024/t1.tif")) == tmp_path / "out/geo/tiles/2024/t1_seg.tif"
    assert catalog.output_for(ct, tmp_path / "scans/s.nii.gz") == tmp_path / "out/ct/s_seg.nii.gz"
    settings = catalog.cluster.settings()
    assert (settings.workers, settings.address) == (1, None)
    assert catalog.schedule is not None
    assert catalog.schedule.cron == "0 2 * * *"


def test_repository_catalog_is_valid_and_finds_the_sample_data(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped data_catalog.yaml, with stand-in cards under the real model names."""
    catalog = load_catalog(ROOT / "data_catalog.yaml")
    assert [s.kind for s in catalog.sources] == ["medical", "geo"]
    assert catalog.output_root == ROOT / "out"
    make_card(tmp_path, name="ct-organs", n_labels=6, roi_size=(32, 32, 16))
    make_card(tmp_path, name="buildings", spatial_dims=2, n_labels=2, roi_size=(64, 64), bands=[1])
    monkeypatch.setenv("PIPELINE_MODELS_DIR", str(tmp_path))
    plan = discover(catalog)  # discovery writes nothing; these stand-in weights match no manifest
    found = {job.scan.relative_to(ROOT).as_posix(): job for job in plan.pending}
    assert set(found) == {"data/medical/example_ct_sm.nii.gz", "data/geo/sample_geotiff.tif"}
    ct, geo = found["data/medical/example_ct_sm.nii.gz"], found["data/geo/sample_geotiff.tif"]
    assert ct.output == ROOT / "out/ct/example_ct_sm_seg.nii.gz"
    assert ct.reference == ROOT / "data/medical/example_ct_sm_ct-organs_ref.nii.gz"
    assert geo.reference == ROOT / "data/geo/geotiff_labels.geojson"
    assert geo.bands == (1,)
    assert geo.output == ROOT / "out/buildings/sample_geotiff_seg.tif"
    assert geo.vectors == ROOT / "out/buildings/sample_geotiff_seg.gpkg"


def _mutate(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is KeyError:
        del node[last]
    else:
        node[last] = value


BAD = [
    ("sources.0.kind", "medcal",
     r"sources\.0\.kind: unknown kind 'medcal'; did you mean 'medical'\? \(choices: medical, geo, dicomweb\)"),
    ("sources.0.colour", "red", r"sources\.0\.colour: Extra inputs are not permitted"),
    ("sources.0.name", "CT scans", r"sources\.0\.name: String should match pattern"),
    ("sources.0.model", KeyError, r"sources\.0\.model: Field required"),
    ("sources.0.bands", [1], r"sources\.0: bands is only valid for kind 'geo', not 'medical'"),
    ("sources.0.vectors", "shp", r"sources\.0\.vectors: unknown vector format 'shp' \(choices: gpkg, geojson\)"),
    ("sources.0.glob", "../*.nii.gz", r"sources\.0\.glob: glob must not contain '\.\.'"),
    ("sources.0.reference", {"name": "{subject}_ref.nii.gz"}, r"sources\.0\.reference\.name: only \{stem\}"),
    ("sources.0.reference", {"name": "../{stem}.nii.gz"}, r"sources\.0\.reference\.name: must be a file name"),
    ("output_root", KeyError, r"output_root: Field required"),
    ("cluster.workers", 0, r"cluster\.workers: Input should be greater than or equal to 1"),
    ("cluster.memory_limit", "lots", r"cluster\.memory_limit: not a memory size"),
    ("schedule.cron", "every night", r"schedule\.cron: must be a 5-field cron expression"),
    ("schedule.timezone", "Europe/Atlantis", r"schedule\.timezone: unknown time zone 'Europe/Atlantis'"),
    ("sources", [], r"sources: List should have at least 1 item"),
    ("workers", 4, r"workers: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD])
def test_bad_key_gives_one_line_naming_file_and_key(tmp_path: Path, key: str, value: Any, message: str) -> None:
    data = yaml.safe_load(write_catalog(tmp_path, [copy.deepcopy(SOURCE)]).read_text())
    _mutate(data, key, value)
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError, match=message) as caught:
        load_catalog(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    assert "\n" not in text
    assert isinstance(caught.value, PipelineError)
    assert isinstance(caught.value, ValueError)


def test_duplicate_source_names_and_outputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"sources\.1\.name: duplicate source name 'ct'"):
        load_catalog(write_catalog(tmp_path, [SOURCE, SOURCE]))
    with pytest.raises(CatalogError, match=r"sources\.1\.output: .* is also the output of source 'ct'"):
        load_catalog(write_catalog(tmp_path, [SOURCE, {**SOURCE, "name": "ct2", "output": "ct"}]))


@pytest.mark.parametrize("output", ["../elsewhere", "ct/../../elsewhere", "/tmp/elsewhere", "~/elsewhere"])
def test_output_cannot_escape_the_output_root(tmp_path: Path, output: str) -> None:
    with pytest.raises(CatalogError, match=r"sources\.0\.output: output must (be relative|not contain '\.\.')"):
        load_catalog(write_catalog(tmp_path, [{**SOURCE, "output": output}]))


def test_output_symlinked_outside_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ct").symlink_to(outside)
    with pytest.raises(CatalogError, match=r"sources\.0\.output: 'ct' resolves to .*outside, outside the output root"):
        load_catalog(write_catalog(tmp_path, [SOURCE]))


def test_symlinked_subdirectory_outside_the_root_is_refused_at_discovery(tmp_path: Path) -> None:
    (tmp_path / "scans" / "sub").mkdir(parents=True)
    scan = tmp_path / "scans" / "sub" / "x.nii.gz"
    scan.write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "out" / "ct").mkdir(parents=True)
    (tmp_path / "out" / "ct" / "sub").symlink_to(tmp_path / "outside")
    catalog = load_catalog(write_catalog(tmp_path, [{**SOURCE, "glob": "**/*.nii.gz"}]))
    with pytest.raises(OutputError, match=r"x_seg\.nii\.gz: resolves to .*outside.*outside the output root"):
        catalog.output_for(catalog.sources[0], scan)


def test_python_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data_catalog.yaml"
    marker = tmp_path / "executed"
    path.write_text(f"output_root: !!python/object/apply:os.system ['touch {marker}']\nsources: []\n")
    with pytest.raises(CatalogError, match=r"data_catalog\.yaml: not a valid YAML data catalog \(could not "
                                           r"determine a constructor for the tag .*python/object/apply"):
        load_catalog(path)
    assert not marker.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("sources: [a\n", r"not a valid YAML data catalog \(.* at line 2, column 1\)"),
    ("- just\n- a list\n", r"a data catalog must be a YAML mapping, got list"),
])
def test_unreadable_catalogs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "data_catalog.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)
    with pytest.raises(CatalogError, match=r"missing\.yaml: data catalog not found"):
        load_catalog(tmp_path / "missing.yaml")


def test_select_names_unknown_sources(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, [SOURCE]))
    assert catalog.select("ct") == [(0, catalog.sources[0])]
    with pytest.raises(CatalogError, match=r"no source named 'cts'; did you mean 'ct'\? \(sources: ct\)"):
        catalog.select("cts")


def test_discovery_names_the_key_of_a_missing_directory_or_model(tmp_path: Path, tiny_card: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, [{**SOURCE, "model": str(tiny_card)}]))
    with pytest.raises(CatalogError, match=r"catalog\.yaml: sources\.0\.directory: .*scans is not a directory"):
        discover(catalog)
    catalog = load_catalog(write_catalog(tmp_path, [{**SOURCE, "model": "no-such-model"}]))
    with pytest.raises(CatalogError, match=r"catalog\.yaml: sources\.0\.model: unknown model 'no-such-model'"):
        discover(catalog)


def test_kinds_come_from_the_segmenter_registry() -> None:
    assert set(SEGMENTERS) == {"medical", "geo", "dicomweb"}
    assert SEGMENTERS["medical"].load().__name__ == "segment_volume"
    assert SEGMENTERS["dicomweb"].load().__name__ == "segment_series"
    assert SEGMENTERS["medical"].stem("scan.v2.nii.gz") == "scan.v2"
    assert SEGMENTERS["geo"].stem("tile.TIF") == "tile"


def test_every_segmenter_imports_and_an_import_error_is_not_hidden() -> None:
    """Both front ends have landed: a broken import is a bug to see, not a source reported as unavailable."""
    assert SEGMENTERS["geo"].load().__name__ == "segment_raster"
    missing = Segmenter("tests.flows.no_such_module", "segment", (".tif",), ".tif")
    with pytest.raises(ModuleNotFoundError, match="tests.flows.no_such_module"):
        missing.load()
