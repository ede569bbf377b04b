"""The data modules keep the DataSplits contract that the commands rely on."""

from __future__ import annotations

import pytest
from test_models import ToyData

from add_lightning.data import AudioDataModule, SyntheticDataset, WaveformDataModule
from add_lightning.models.data_contract import DataSplits

CLASSES = ["00_tone", "01_chirp", "02_noise", "03_am", "04_tone"]  # SyntheticDataset's 5


def _dataset(root) -> SyntheticDataset:
    dataset = SyntheticDataset(root=str(root), num_classes=5, clips_per_class=2, num_folds=2)
    assert dataset.class_names == CLASSES
    return dataset


@pytest.mark.parametrize("module", [AudioDataModule, WaveformDataModule])
def test_data_modules_name_the_classes_of_each_split(module, tmp_path):
    data = module(_dataset(tmp_path), fold=1, predict_split="validation")
    assert isinstance(data, DataSplits)
    assert data.unseen_class_names is None
    assert data.split_class_names("test") == data.split_class_names("train") == CLASSES
    assert data.predict_split == "validation"
    assert data.validation_is_test  # the held-out fold validates: val_fraction 0
    assert not module(_dataset(tmp_path), fold=1, val_fraction=0.2).validation_is_test


def test_held_out_classes_are_the_test_splits(tmp_path):
    data = AudioDataModule(_dataset(tmp_path), fold=1, unseen_classes=["01_chirp", "04_tone"])
    assert isinstance(data, DataSplits)
    assert data.unseen_class_names == ["01_chirp", "04_tone"]
    assert data.split_class_names("test") == ["01_chirp", "04_tone"]
    assert data.split_class_names("train") == ["00_tone", "02_noise", "03_am"]


def test_other_data_modules_are_not_taken_for_one():
    # any LightningDataModule works with the commands; it just has no such splits
    assert not isinstance(ToyData(), DataSplits)
