"""TrainConfig: the recipe's defaults, the checks, the metadata the CLI is built from."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from hnets.training import DATASET_LR, DEFAULT_EVAL_BLUR, DEFAULT_LR, TrainConfig, recipe_lr
from hnets.training.config import RUNTIME_FIELDS


def test_the_recipe_lives_in_one_place():
    c = TrainConfig().check()
    assert (c.model, c.epochs, c.batch_size, c.optimizer, c.lr, c.weight_decay) == (
        "hnet",
        90,
        64,
        "adamw",
        5e-3,
        1e-4,
    )
    assert (c.schedule, c.warmup_epochs, c.label_smoothing, c.augment) == ("cosine", 1, 0.05, True)
    assert (c.train_split, c.seed) == ("train+valid", 0)
    assert c.model_options == {"width": 1.2, "eval_blur": 0.5}
    assert TrainConfig(model="cnn").check().lr == 1e-2  # each model's tuned peak rate
    assert TrainConfig(model="cnn").check().model_options == {"width": 1.15, "eval_blur": 0.5}
    given = TrainConfig(model_options={"width": 1.0, "max_order": 2, "eval_blur": 0.3}).check()
    assert given.model_options == {"width": 1.0, "max_order": 2, "eval_blur": 0.3}  # given win
    assert TrainConfig(model="cnn", lr=0.5).check().lr == 0.5
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_the_learning_rate_is_chosen_per_dataset_where_its_validation_chose_one():
    assert DATASET_LR["rotfashion"] == {"hnet": 1e-2, "cnn": 2e-2}
    assert DEFAULT_LR == {"hnet": 5e-3, "cnn": 1e-2}  # Rot-MNIST's, and everyone else's
    assert TrainConfig(model="cnn", dataset="rotfashion").check().lr == 2e-2
    assert TrainConfig(model="hnet", dataset="rotfashion").check().lr == 1e-2
    assert TrainConfig(model="cnn", dataset="rotmnist").check().lr == 1e-2
    for model in DEFAULT_LR:  # no entry: the model's default, also for the user's folders
        assert recipe_lr(model, "folder:/somewhere") == DEFAULT_LR[model]
        assert recipe_lr(model, "rotfashion") == DATASET_LR["rotfashion"].get(
            model, DEFAULT_LR[model]
        )
    assert TrainConfig(model="cnn", dataset="rotfashion", lr=0.5).check().lr == 0.5  # given wins
    helptext = next(f for f in dataclasses.fields(TrainConfig) if f.name == "lr").metadata["help"]
    assert "rotfashion: 0.01 for hnet, 0.02 for cnn" in helptext


def test_eval_blur_defaults_to_the_recipes_with_augmentation_and_to_none_without():
    assert TrainConfig(augment=True).check().model_options["eval_blur"] == DEFAULT_EVAL_BLUR > 0
    assert TrainConfig(augment=False).check().model_options["eval_blur"] == 0.0
    # a run saved before the option existed evaluated without a blur, and still does
    saved = TrainConfig().check().to_dict()
    del saved["model_options"]["eval_blur"]
    assert TrainConfig.from_dict(saved).model_options == {"width": 1.2, "eval_blur": 0.0}
    # settings written by hand without model options take the recipe's
    assert TrainConfig.from_dict({"epochs": 3}).model_options["eval_blur"] == DEFAULT_EVAL_BLUR


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "resnet"},
        {"epochs": 0},
        {"lr": -1.0},
        {"valid_every": 0},
        {"lr": math.nan},
        {"schedule": "linear"},
        {"optimizer": "lamb"},
        {"train_split": "test"},
        {"device": "tpu"},
        {"label_smoothing": 1.0},
        {"limit_train": 0},
        {"data_variant": "mnist"},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        dataclasses.replace(TrainConfig(), **bad).check()
    with pytest.raises(ValueError, match="unknown training settings: colour"):
        TrainConfig.from_dict({"colour": "blue"})


def test_every_setting_has_help_and_says_whether_it_may_change_on_resume():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"].strip(), f.name
        assert isinstance(f.metadata["runtime"], bool), f.name
    # where and how a run executes, not what it computes (as before the metadata held it)
    where_and_how = {"device", "data_dir", "num_workers", "eval_batch_size", "compile", "test"}
    assert where_and_how == RUNTIME_FIELDS
