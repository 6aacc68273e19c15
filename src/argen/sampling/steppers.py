"""The registry of stepper kinds: a model declares its kind (`Capabilities.stepper_kind`), and
sampling builds the stepper from here. Nothing in this module knows a model family.

A kind is a name with
- `build(model, cond, order=None) -> Stepper`: the per-position stepper `autoregressive_fill`
  drives (`order`: a generation order other than the model's, for models that take `order=`);
- optionally `generate(model, x, known, cond, config, **options) -> x`: a sampler that replaces
  the generic loop altogether (ARDM's parallel sampler), `naive=True` included.

Factories use only the public surface a kind documents (the conv planner traces `forward`; the
recurrent kind calls `raster_steps`; the KV-cache kind `embed` / `trunk` / `new_cache` /
`pattern`; the ARDM kind `dim_ranks`, `step_log_probs`, `stages`, the recorded step losses).
Their modules are imported when a stepper is first built, so importing `argen.sampling` stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from argen.sampling.naive import NaiveStepper, Stepper

StepperFactory = Callable[..., Stepper]


@dataclass(frozen=True)
class StepperKind:
    name: str
    build: StepperFactory
    generate: Callable[..., Tensor] | None = None  # replaces the generic loop when given
    doc: str = ""


_KINDS: dict[str, StepperKind] = {}


def register_stepper_kind(name: str, build: StepperFactory, generate: Callable[..., Tensor] | None = None,
                          doc: str = "") -> None:
    """Add a stepper kind (ValueError if the name is taken)."""
    if name in _KINDS:
        raise ValueError(f"stepper kind {name!r} is already registered")
    _KINDS[name] = StepperKind(name, build, generate, doc)


def stepper_kinds() -> list[str]:
    return sorted(_KINDS)


def stepper_kind(name: str) -> StepperKind:
    if name not in _KINDS:
        raise ValueError(f"expected a stepper kind in {stepper_kinds()}, given {name!r}")
    return _KINDS[name]


def build_stepper(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
    """The model's own stepper (its declared kind) for the generic loop."""
    return stepper_kind(model.capabilities.stepper_kind).build(model, cond, order=order)


def _no_order(kind: str, order: Any) -> None:
    if order is not None:
        raise ValueError(f"the {kind} stepper walks the model's generation order: expected order=None, given an order")


def own_order_factory(kind: str, build: Callable[[Any, Tensor | None], Stepper]) -> Callable[..., Stepper]:
    """The factory of a kind whose steppers walk the model's own generation order: `build(model,
    cond)`, refusing `order=` with one message for every such kind."""

    def factory(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
        _no_order(kind, order)
        return build(model, cond)

    return factory


# ----- the built-in kinds ---------------------------------------------------------------------------
def _naive(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
    return NaiveStepper(model, cond) if order is None else NaiveStepper(model, cond, order=order)


def _conv_plan(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
    from argen.sampling.cached import CachedStepper

    return CachedStepper(model, cond, order)


def _recurrent(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
    from argen.sampling.recurrent_cache import RecurrentStepper

    _no_order("recurrent", order)
    return RecurrentStepper(model, cond)


def _kv_cache(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
    from argen.sampling.transformer_cache import TransformerStepper

    _no_order("KV-cache", order)
    return TransformerStepper(model, cond)


def _ardm(model: Any, cond: Tensor | None, order: Any = None) -> Stepper:
    from argen.sampling.ardm_sampler import order_stepper

    return order_stepper(model, cond, order)


def _ardm_generate(*args: Any, **kwargs: Any) -> Tensor:
    from argen.sampling.ardm_sampler import generate

    return generate(*args, **kwargs)


register_stepper_kind("naive", _naive, doc="reruns the whole network per step (the reference)")
register_stepper_kind("conv_plan", _conv_plan,
                      doc="convolutional networks: the traced cached planner (argen.sampling.cached)")
register_stepper_kind("recurrent", _recurrent,
                      doc="carried LSTM states, one column per layer per pixel (model.raster_steps)")
register_stepper_kind("kv_cache", _kv_cache, doc="transformers: prefill + decode one slot from static KV caches")
register_stepper_kind("ardm", _ardm, _ardm_generate,
                      doc="order-agnostic ARDMs: parallel sampling under a call budget; per-sub-pixel reference")


__all__ = ["StepperKind", "register_stepper_kind", "stepper_kinds", "stepper_kind", "build_stepper", "own_order_factory"]
