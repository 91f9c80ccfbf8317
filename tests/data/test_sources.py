"""A dataset as a type: what each kind accepts, refuses and knows before preparing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnets.data.registry import DATASETS
from hnets.data.sources import FOLDER_OPTIONS, FolderSource, RegisteredSource, data_source
from hnets.errors import DataError


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_registered_dataset_knows_its_classes_and_refuses_folder_options(name: str) -> None:
    source = data_source(name)
    assert isinstance(source, RegisteredSource) and source.name == name
    assert source.known_classes() == DATASETS[name].classes
    assert source.manifest_dataset == name and source.option_names == ()
    source.check_options(dict.fromkeys(FOLDER_OPTIONS))  # nothing asked for: accepted
    for option in FOLDER_OPTIONS:
        with pytest.raises(DataError, match=f"{option}: only for --dataset folder:PATH"):
            source.check_options({option: 1})
    with pytest.raises(DataError, match="variant"):
        source.check_variant("no-such-variant")
    for variant in (None, *DATASETS[name].variants):
        source.check_variant(variant)
    assert source.recorded_variant({"data_variant": "x"}) == "x"
    assert source.model_options({"image_shape": [1, 28, 28]}, 1) == {}


def test_a_folder_dataset_has_no_variants_and_takes_the_models_sizes(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in ("b", "a"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "x.png").write_bytes(b"not decoded here")
    source = data_source(f"folder:{tmp_path}")
    assert isinstance(source, FolderSource) and source.manifest_dataset == "folder"
    assert source.known_classes() == ("a", "b")  # the folder names: nothing decoded
    for variant in (None, "folder"):
        source.check_variant(variant)
    with pytest.raises(DataError, match="no variant 'upright'"):
        source.check_variant("upright")
    source.check_options({"image_size": 32, "channels": 3, "skip_bad": True})
    assert source.recorded_variant({"data_variant": "folder"}) is None
    extra = {"image_shape": [3, 40, 40], "train_config": {"skip_bad": True}}
    assert source.model_options(extra, 3) == {"image_size": 40, "channels": 3, "skip_bad": True}


@pytest.mark.parametrize("name", ["mnist", "folder:", "Folder:x"])
def test_an_unknown_name_is_one_data_error(name: str) -> None:
    with pytest.raises(DataError):
        data_source(name)
