"""``hnets models``: the pretrained models shipped in the package, with their figures."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` command."""
    p = sub.add_parser(
        "models",
        help="list the pretrained models shipped with hnets",
        description=(
            "List the pretrained models inside the installed package: parameters, test "
            "error (split and image count), dataset, and what each is. Every --checkpoint "
            "takes these names; in Python, hnets.get_model(NAME, pretrained=True)."
        ),
    )
    p.add_argument(
        "--json", action="store_true", help="print every model's metadata as one JSON object"
    )
    p.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from ..hub import WEIGHTS

    if args.json:
        print(json.dumps({name: w.meta for name, w in WEIGHTS.items()}, indent=2))
        return 0
    rows = [("name", "params", "test error", "test images", "dataset", "model")]
    for name, weights in WEIGHTS.items():
        meta = weights.meta
        data, test = meta["dataset"], meta["metrics"]["test"]
        shown = f"{data['title']} ({data['variant']})"
        rows.append(
            (
                name,
                f"{meta['num_params']:,}",
                f"{test['error']:.2%}",
                f"{test['n']:,} {test['split']}",
                shown,
                weights.summary,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [
            cell.rjust(w) if i in (1, 2, 3) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*cells, row[-1]]))
    return 0
