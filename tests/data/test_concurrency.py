"""Two ``prepare`` runs at once: both succeed, one dataset, identical to any other build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hnets.data.cache import verify_variant

_PREPARE = (
    "import sys; from hnets.cli import main; "
    "sys.exit(main(['data', 'prepare', '--from-mnist', sys.argv[1], '--data-dir', sys.argv[2], "
    "'--no-progress']))"
)


def test_two_processes_prepare_at_once(tmp_path: Path, mnist_dir: Path, standin_root: Path, kit):
    root = tmp_path / "shared-data"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(mnist_dir), str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(proc.wait(timeout=120), *proc.communicate()) for proc in procs]
    for code, out, err in results:
        assert code == 0, err
        assert "Rot-MNIST ready in" in out and "train 10000, valid 2000, test 50000" in out
    assert sorted(p.name for p in root.iterdir()) == ["rotmnist-standin"]  # no temp dirs left
    vdir = root / "rotmnist-standin"
    verify_variant(vdir)
    # Determinism: a build in other processes has the session build's exact bytes.
    assert kit.digests(vdir) == kit.digests(standin_root / "rotmnist-standin")
