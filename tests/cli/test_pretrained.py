"""``hnets models`` and the pretrained names every ``--checkpoint`` takes."""

from __future__ import annotations

import json

import pytest

import hnets
from hnets.cli import build_parser, main
from hnets.hub import get_weights

from ..conftest import one_error_line


def test_models_lists_the_six_models_with_their_figures(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "params", "test"]
    assert [line.split()[0] for line in lines[1:]] == hnets.list_models()
    for line, name in zip(lines[1:], hnets.list_models(), strict=True):
        meta = get_weights(name).meta
        test = meta["metrics"]["test"]
        for figure in (f"{meta['num_params']:,}", f"{test['error']:.2%}", f"{test['n']:,} test"):
            assert figure in line, (figure, line)


def test_models_json_is_the_registry_metadata(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed) == hnets.list_models()
    assert all(listed[n] == get_weights(n).meta for n in listed)


def test_every_checkpoint_flag_says_it_takes_a_name():
    commands = {"test", "predict", "tune", "export", "robustness", "equivariance"}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    with_checkpoint = {
        name
        for name, p in sub.items()
        if any("--checkpoint" in a.option_strings for a in p._actions)
    }
    assert with_checkpoint == commands
    for name in commands:
        flag = next(a for a in sub[name]._actions if "--checkpoint" in a.option_strings)
        assert "pretrained model's name" in flag.help and flag.metavar == "DIR|NAME"


def test_predict_by_name_and_an_unknown_name(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "seven_rotated.png"
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--checkpoint", "hnet-rotmnist", str(example), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)["predictions"]
    assert prediction["class"] == "7" and prediction["probability"] > 0.5
    assert main(["predict", "--checkpoint", "hnet-sideways", str(example)]) == 2
    assert "nor a pretrained model (hnet-rotmnist" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["hnet-rotmnist", "cnn-upright"])
def test_test_by_name_scores_the_shipped_model(name, data_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the upright runs' test split is the stand-in's (rotated): the session prepared that
    argv = ["test", "--checkpoint", name, "--limit", "200", "--variant", "standin", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 200 and report["checkpoint"] == name and report["figure"] is None
    assert report["accuracy"] > (0.9 if name == "hnet-rotmnist" else 0.3)
    assert list(tmp_path.iterdir()) == []
