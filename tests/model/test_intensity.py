"""Each intensity transform bundles use, mapped to card preprocessing and streamed over chunks, gives what the
MONAI transform gives on the whole image (the real CT plus a second, synthetic channel), and bundle values are
resolved as MONAI's ConfigParser resolves them, without running code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.model.bundle_config import BundleValues, NeedsTrust, harmless
from pipeline.model.bundles import bundle_preprocess
from pipeline.model.intensity import apply, statistics

CT = Path(__file__).resolve().parents[2] / "data" / "medical" / "example_ct_sm.nii.gz"

TRANSFORMS: list[dict[str, Any]] = [
    {"_target_": "ScaleIntensityRanged", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True},
    {"_target_": "ScaleIntensityRanged", "a_min": -1000, "a_max": 1000, "b_min": -1, "b_max": 1},  # clip=False
    {"_target_": "ScaleIntensityd", "minv": -1.0, "maxv": 1.0},
    {"_target_": "ScaleIntensityd", "channel_wise": True},
    {"_target_": "NormalizeIntensityd"},
    {"_target_": "NormalizeIntensityd", "nonzero": True},
    {"_target_": "NormalizeIntensityd", "nonzero": True, "channel_wise": True},
    {"_target_": "NormalizeIntensityd", "channel_wise": True},
    {"_target_": "ScaleIntensityRangePercentilesd", "lower": 5, "upper": 95, "b_min": 0, "b_max": 1, "clip": True},
    {"_target_": "ScaleIntensityRangePercentilesd", "lower": 0.5, "upper": 99.5, "b_min": 0, "b_max": 1,
     "relative": True, "channel_wise": True},
]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """The real CT as channel 0; channel 1 a flipped, rescaled copy with zeroed slabs (so nonzero matters)."""
    ct = np.asanyarray(nib.load(CT).dataobj).astype(np.float32)
    other = ct[::-1] * 0.5 + 200
    other[:, :, :5] = 0
    return np.stack([ct, other])


def parser_of(config: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)  # type: ignore[arg-type]  # a dict is a config too
    return parser


def monai_output(steps: list[dict[str, Any]], image: np.ndarray) -> np.ndarray:
    parser = parser_of({"preprocessing": {"_target_": "Compose", "transforms": steps}})
    return np.asarray(parser.get_parsed_content("preprocessing")({"image": torch.from_numpy(image.copy())})["image"])


def streamed(preprocess: Any, image: np.ndarray) -> np.ndarray:
    lazy = da.from_array(image, chunks=(2, 50, 40, 13))  # chunks that do not divide the shape
    found = statistics(preprocess, lazy)
    return lazy.map_blocks(lambda b: apply(preprocess, b, found), dtype=np.float32).compute(scheduler="synchronous")


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: "-".join(f"{k}={v}" for k, v in t.items())[9:])
def test_each_bundle_transform_streams_to_monais_result(transform: dict[str, Any], image: np.ndarray) -> None:
    steps = [{**transform, "keys": "image"}]
    card_step = bundle_preprocess(parser_of({"preprocessing": {"_target_": "Compose", "transforms": steps}}))
    np.testing.assert_allclose(streamed(_validated(card_step), image), monai_output(steps, image), rtol=0, atol=3e-6)


def _validated(step: dict[str, Any]) -> Any:
    from pydantic import TypeAdapter

    from pipeline.config.preprocess import Preprocess

    return TypeAdapter(Preprocess).validate_python(step)


def test_a_chain_takes_each_steps_statistics_after_the_steps_before(image: np.ndarray) -> None:
    steps = [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
             {"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 1.0},
             {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 2, "upper": 98,
              "b_min": 0, "b_max": 1}]
    card = bundle_preprocess(parser_of({"preprocessing": {"_target_": "Compose", "transforms": steps}}))
    assert [s["kind"] for s in card["steps"]] == ["zscore", "minmax", "percentiles"]
    np.testing.assert_allclose(streamed(_validated(card), image), monai_output(steps, image), rtol=0, atol=3e-6)


CONFIG = {"display": {"highres": True, "overlap": 0.25}, "size": [96, 96, 64],
          "pixdim": "$[1.5, 1.5, 1.5] if @display#highres else [3.0, 3.0, 3.0]",
          "dims": "$len(@size)", "half": "$[s // 2 for s in @size]", "roi": "$@size[:2] + [max(@size) - 32]",
          "overlap": "@display::overlap", "device": "$torch.device('cpu')", "imported": "$__import__('os')"}


@pytest.mark.parametrize("key", ["pixdim", "dims", "roi", "overlap"])
def test_references_and_harmless_expressions_resolve_as_monai_does(key: str) -> None:
    assert BundleValues(parser_of(CONFIG)).get(key) == parser_of(CONFIG).get_parsed_content(key)


@pytest.mark.parametrize("key", ["device", "imported", "half"])
def test_code_is_evaluated_only_when_trusted(key: str) -> None:
    """Attribute lookups, imports and comprehensions are code: refused, or MONAI's result when trusted."""
    assert not harmless(CONFIG[key])
    with pytest.raises(NeedsTrust, match="trust"):
        BundleValues(parser_of(CONFIG)).get(key)
    if key != "imported":
        assert BundleValues(parser_of(CONFIG), trust=True).get(key) == parser_of(CONFIG).get_parsed_content(key)
