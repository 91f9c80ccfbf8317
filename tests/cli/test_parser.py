"""The ``hnets`` parser itself: a bad command line is one line, like every other bad input."""

from __future__ import annotations

import argparse

import pytest

from hnets.cli import int_list, main

from ..conftest import one_error_line


@pytest.mark.parametrize(
    ("argv", "message", "help_of"),
    [
        ([], "the following arguments are required: COMMAND", "hnets"),
        (["trian"], "invalid choice: 'trian'", "hnets"),
        (
            ["train", "--epochs", "many"],
            "argument --epochs: invalid int value: 'many'",
            "hnets train",
        ),
        (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag", "hnets train"),
        (["data", "prepare", "--zz", "x"], "unrecognized arguments: --zz x", "hnets data prepare"),
        (
            ["train", "--model-channels", "8,,32"],
            "expected integers separated by commas",
            "hnets train",
        ),
        (["study", "--seeds", "0;1"], "argument --seeds: expected integers", "hnets study"),
        (
            ["data", "prepare", "--dataset"],
            "argument --dataset: expected one argument",
            "hnets data prepare",
        ),
        (["train", "--resume", "--overwrite"], "not allowed with argument", "hnets train"),
    ],
)
def test_a_bad_command_line_is_one_line_naming_the_problem(capsys, argv, message, help_of) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = one_error_line(capsys)
    assert message in err
    assert err.endswith(f"(`{help_of} --help` lists the options)")


def test_help_still_prints_the_usage_and_exits_0(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hnets train") and "--model-channels" in out


def test_int_list_reads_comma_separated_integers() -> None:
    assert int_list("8,20,40") == [8, 20, 40]
    assert int_list(" 3") == [3]
    for bad in ("", "1,", "1.5", "a"):
        with pytest.raises(
            argparse.ArgumentTypeError, match="expected integers separated by commas"
        ):
            int_list(bad)
