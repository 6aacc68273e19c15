"""The generic autoregressive loop and the naive stepper (one full forward pass per step).

`autoregressive_fill` walks the model's generation order; at each position and channel it asks
a stepper for the distribution parameters there, turns them into the channel's conditional with
the model's distribution, and draws. Faster samplers only replace the stepper, so they are
checked against the naive one step by step.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from argen.positions import at, channels_first, put
from argen.sampling.config import SamplingConfig
from argen.sampling.logits import classifier_free_guidance, draw, process_logits


class Stepper(Protocol):
    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        """(B, P) distribution parameters at `pos` given `x` (valid before `pos`, and at `pos`
        for channels < `channel`)."""


class NaiveStepper:
    """Reruns the whole network whenever the model's output at `pos` may have changed.

    `forward_kwargs` go to every forward call (e.g. `order=` for models that generate in a
    chosen order, such as LMConv completing in an order that visits the known pixels first).
    """

    def __init__(self, model: Any, cond: Tensor | None, **forward_kwargs: Any) -> None:
        self.model, self.cond, self.forward_kwargs = model, cond, forward_kwargs
        self.rerun_each_channel = model.distribution.output_depends_on_current_pixel
        self._params: Tensor | None = None

    def params_at(self, x: Tensor, pos: tuple[int, ...], channel: int) -> Tensor:
        if channel == 0 or self.rerun_each_channel or self._params is None:
            self._params = self.model(x, self.cond, **self.forward_kwargs)
        return at(self._params, pos)

    def skip(self, x: Tensor, pos: tuple[int, ...]) -> None:
        self._params = None


def autoregressive_fill(
    model: Any,
    x: Tensor,
    known: Tensor | None,
    cond: Tensor | None,
    stepper: Stepper,
    *,
    config: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    progress: bool = False,
    choose: Callable[[Tensor, tuple[int, ...], int], Tensor] | None = None,
    order: Sequence[tuple[int, ...]] | None = None,
    uncond_stepper: Stepper | None = None,
) -> Tensor:
    """Fill `x` in place in the model's order (all of it, or where `known` is False).

    The sampling options come as a `SamplingConfig` (`config=`) or, as a convenience, as the
    keywords generator / temperature / top_k / top_p / progress (not both). `config.naive` is the
    caller's choice of `stepper`; this loop only drives the stepper it is given.

    Classifier-free guidance (`config.cfg_scale != 1`): `uncond_stepper` serves the same positions
    under the null condition, and each drawn conditional is
    `classifier_free_guidance(conditional, unconditional, cfg_scale)` before temperature / top-k /
    top-p.

    `order` replaces the model's generation order (LMConv completes in an order that visits the
    known pixels first); the stepper's model must then follow that same order.

    `choose(log_probs (B, L), pos, channel) -> values (B,)` replaces random drawing when given
    (the entropy decoder uses it to read values from a bit stream through this very loop). The
    conditional handed to it sees channels >= `channel` at `pos` as zero, exactly as the encoder
    reproduces it, so both sides compute bit-identical tables.
    """
    keywords = dict(generator=generator, temperature=temperature, top_k=top_k, top_p=top_p, progress=progress)
    if config is None:
        config = SamplingConfig(**keywords)
    elif any(v != SamplingConfig.__dataclass_fields__[k].default for k, v in keywords.items()):
        raise ValueError("expected the sampling options either as config= or as keywords, given both")
    if config.cfg_scale != 1.0 and uncond_stepper is None:
        raise ValueError(f"cfg_scale={config.cfg_scale} needs an unconditional stepper (uncond_stepper=), given none")
    generator, temperature, top_k, top_p = config.generator, config.temperature, config.top_k, config.top_p
    dist = model.distribution
    order = model.generation_order() if order is None else order
    batch = x.shape[0]
    xc = channels_first(x)  # (B, C, *positions) view: writes reach x (video data is (B, T, C, H, W))
    for pos in tqdm(order, desc="sampling", disable=not config.progress, leave=False):
        index = (slice(None), *pos)
        keep = known[index] if known is not None else None  # (B,) bool
        if keep is not None and bool(keep.all()):
            stepper.skip(x, pos)
            if uncond_stepper is not None:
                uncond_stepper.skip(x, pos)
            continue
        put(xc, pos, torch.where(keep[:, None], at(xc, pos), 0) if keep is not None else 0)
        for c in range(model.channels):
            params = stepper.params_at(x, pos, c)
            table = dist.conditionals(params, at(xc, pos))[:, c]  # (B, L)
            if choose is not None:
                value = choose(table, pos, c)
            else:
                if uncond_stepper is not None and config.cfg_scale != 1.0:
                    params_u = uncond_stepper.params_at(x, pos, c)
                    table_u = dist.conditionals(params_u, at(xc, pos))[:, c]
                    table = classifier_free_guidance(table, table_u, config.cfg_scale)
                logits = process_logits(table, temperature, top_k, top_p)
                u = torch.rand(batch, generator=generator, device=generator.device if generator else x.device)
                value = draw(logits, u.to(x.device))
            if keep is not None:
                value = torch.where(keep, at(xc, pos, channel=c), value)
            put(xc, pos, value, channel=c)
    return x
