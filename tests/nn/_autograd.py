"""Helpers shared by the tests of hnets.nn."""

from __future__ import annotations

import torch


def autograd_names(t: torch.Tensor) -> set[str]:
    """Names of every node in ``t``'s autograd graph."""
    seen, todo = {}, [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen[id(fn)] = fn.name()
            todo += [nxt for nxt, _ in fn.next_functions]
    return set(seen.values())
