"""Tracing a network's forward with torch.fx for the planner.

Leaf modules and leaf functions are those registered in `argen.nn` (`argen.nn.util.fx_leaf`):
convolutions stay single `call_module` nodes (their cached versions come from their
`causal_spec()`), `map_attention` stays a single `call_function` node; everything else is traced
through down to torch functions. Buffers are proxied, so a constant buffer may be expanded to
the batch size (PixelSNAIL's coordinate grid) and stays a static value.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

import argen.nn  # noqa: F401  (registers argen's fx leaves)
from argen.nn.util import FX_LEAF_FUNCTIONS, FX_LEAF_MODULES
from argen.sampling.conv_plan.support import UnsupportedLayer


class Tracer(fx.Tracer):
    proxy_buffer_attributes = True

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(FX_LEAF_FUNCTIONS))
        self.leaves = tuple(FX_LEAF_MODULES)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


class Recorder(fx.Interpreter):
    """Runs a traced graph keeping every value; nodes in `fixed` return the given value instead
    (meta tensors standing in for image-dependent maps when only the static values are wanted)."""

    def __init__(self, gm: fx.GraphModule, fixed: dict[fx.Node, Any] | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.fixed = fixed or {}

    def run_node(self, n: fx.Node) -> Any:
        if n in self.fixed:
            return self.fixed[n]
        return super().run_node(n)


def trace(module: nn.Module, with_cond: bool, order: Tensor | None = None) -> fx.GraphModule:
    """forward(x, cond, *rest): x is traced; cond too when given, else fixed to None; further
    parameters keep their defaults (e.g. a model's default generation order), except `order`
    when one is given (fixed to it: the graph is that order's network). A forward(x) is fine."""
    params = list(inspect.signature(module.forward).parameters.values())
    concrete = {p.name: p.default for p in params[2:] if p.default is not inspect.Parameter.empty}
    if order is not None:
        if "order" not in concrete:
            raise UnsupportedLayer(f"{type(module).__name__}.forward takes no `order`: it samples in its own order only")
        concrete["order"] = order
    if len(params) > 1 and not with_cond:
        concrete[params[1].name] = None
    try:
        with warnings.catch_warnings():  # fx cannot guard a specialised tensor argument (the order): we never vary it
            warnings.filterwarnings("ignore", message="Was not able to add assertion")
            graph = Tracer().trace(module, concrete_args=concrete or None)
    except Exception as e:  # data-dependent control flow and the like
        raise UnsupportedLayer(f"{type(module).__name__}.forward cannot be traced for cached sampling: {e}") from e
    return fx.GraphModule(module, graph)


def graph_inputs(gm: fx.GraphModule, x: Any, cond: Any) -> tuple[Any, ...]:
    """The arguments to run `gm` with: (x, cond), or (x) for a forward(x)."""
    placeholders = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    return (x,) if placeholders < 2 else (x, cond)


__all__ = ["Tracer", "Recorder", "trace", "graph_inputs"]
