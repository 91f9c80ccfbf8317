"""torch.hub entry points: hnets' pretrained models by name.

    model = torch.hub.load("<owner>/hnets", "hnet_rotmnist", pretrained=True)
    model = torch.hub.load("/path/to/checkout", "hnet_rotmnist", source="local", pretrained=True)

One entry point per registered model (:func:`hnets.list_models`, ``-`` spelled
``_``), each calling :func:`hnets.get_model`. The checkout's own ``src/hnets`` is
used when hnets is not imported yet, so a clone needs no installation; the weights
are the package data inside it, checked against their sha256 before use.
"""

import sys
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors"]

_SRC = Path(__file__).resolve().parent / "src"
if "hnets" not in sys.modules and (_SRC / "hnets" / "__init__.py").is_file():
    sys.path.insert(0, str(_SRC))

from hnets.hub import WEIGHTS, get_model  # noqa: E402 - after the checkout's src is on the path


def _entry_point(name: str):
    def load(pretrained: bool = False, **options):
        return get_model(name, pretrained=pretrained, **options)

    load.__name__ = load.__qualname__ = name.replace("-", "_")
    load.__doc__ = (
        f"{WEIGHTS[name].summary} (hnets.get_model({name!r}, ...)).\n\n"
        "Args:\n"
        "    pretrained: load the shipped weights (checked against their sha256).\n"
        "    **options: hnets.build_model options overriding the shipped ones.\n"
    )
    return load


for _name in WEIGHTS:
    globals()[_name.replace("-", "_")] = _entry_point(_name)
