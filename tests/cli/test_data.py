"""``hnets data prepare`` and ``hnets data stats`` through the real entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnets.cli import main
from hnets.data.cache import read_manifest

# the data tests' fixtures: an isolated data home, small archives, a local HTTP server
from ..data.conftest import (  # noqa: F401
    _isolated_data_env,
    archives,
    http_server,
    kit,
    mnist_dir,
    standin_root,
)


def test_prepare_from_a_local_file(tmp_path: Path, archives, capsys) -> None:
    archive = tmp_path / "mnist_rotation_new.zip"
    archive.write_bytes(archives.amat_zip())
    code = main(["data", "prepare", "--file", str(archive), "--data-dir", str(tmp_path / "d")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Rot-MNIST ready in" in out and "train 20, valid 4, test 10" in out
    assert read_manifest(tmp_path / "d" / "rotmnist-original")["source"]["kind"] == "file"


def test_prepare_by_url_with_md5(tmp_path: Path, http_server, archives, kit, capsys) -> None:
    body = archives.npz_zip()
    url = http_server.serve("/z.zip", body)
    argv = ["data", "prepare", "--url", url, "--data-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--md5", kit.md5_of(body)]) == 0
    assert main([*argv, "--md5", "f" * 32, "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hnets: error: checksum mismatch")


def test_offline_without_data(tmp_path: Path, kit, capsys) -> None:
    url = kit.closed_port_url()
    code = main(
        ["data", "prepare", "--url", url, "--data-dir", str(tmp_path / "d"), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    for needed in ("hnets: error: cannot download", url, "--from-mnist", "--data-dir"):
        assert needed in err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "d").exists()


def test_stats_without_data_says_what_to_do(tmp_path: Path, capsys) -> None:
    code = main(["data", "stats", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "hnets data prepare --from-mnist DIR" in err and "HNETS_MNIST_DIR" in err
    assert not (tmp_path / "o").exists()


def test_flag_conflicts(tmp_path: Path, capsys) -> None:
    assert main(["data", "prepare", "--upright", "--url", "http://x/y.zip"]) == 2
    assert "--upright builds the stand-in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--from-mnist", str(tmp_path), "--file", "x.zip"])


def test_stats_prints_and_writes_figures(tmp_path: Path, kit, capsys) -> None:
    kit.write_synthetic_variant(tmp_path / "d", "standin", sizes=(30, 10, 10))
    out_dir = tmp_path / "figs"
    code = main(["data", "stats", "--data-dir", str(tmp_path / "d"), "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "class balance" in out and "train" in out and f"wrote {out_dir}" in out
    assert (out_dir / "angle_histogram.png").is_file()


def test_hnets_mnist_dir_builds_the_standin(
    tmp_path: Path, monkeypatch, mnist_dir: Path, standin_root: Path, capsys, kit
) -> None:
    monkeypatch.setenv("HNETS_MNIST_DIR", str(mnist_dir))
    data = tmp_path / "d"
    argv = ["data", "stats", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--limit", "50"]
    assert main(argv) == 0
    assert "'standin'" in capsys.readouterr().out
    assert kit.digests(data / "rotmnist-standin") == kit.digests(standin_root / "rotmnist-standin")
    # `prepare` without a source flag uses HNETS_MNIST_DIR too (and finds it built).
    assert main(["data", "prepare", "--data-dir", str(data), "--no-progress"]) == 0
    assert "rotmnist-standin" in capsys.readouterr().out
