"""IQ-VAE's tokenizer (Zhan et al., ECCV 2022, "Auto-regressive Image Synthesis with Integrated
Quantization"): an image and its condition (an edge map) quantized JOINTLY against one codebook.

No public code exists; this follows the paper's text (abstract and method outline) and says where
it infers. Two conv encoders (argen.nn.autoencoder, the VQ-VAE's), one for the image (C, H, W) in
[0, levels) and one for the condition (Cc, H, W) in [0, condition_levels), map both to latents of
the same grid and width; the two latents are quantized in ONE call of one EMA vector quantizer
(argen.nn.quantize.VectorQuantizer), so the codebook's EMA statistics, data initialisation and
dead-code restarts see both domains and a code means the same vector in either. Two decoders
reconstruct the image and the condition (the condition decoder is what makes the condition tokens
carry the edges; without it the condition encoder would collapse onto any code, since only the
commitment term would train it).

The variational regularizer ("penalises the distribution gap between the two latent domains";
the exact formula is not public, so this is an inference, config `regularizer`):

  "gaussian" (default): each domain's pre-quantization latents, over the batch and the grid, are
      summarised per channel as a Gaussian N(mu, var); the penalty is the symmetric KL
      (KL(x || c) + KL(c || x)) / 2, averaged over channels, which in closed form is
      mean_d [ ((var_x + dmu^2) / var_c + (var_c + dmu^2) / var_x - 2) / 4 ]:
      zero exactly when the two domains have equal means and variances.
  "codes": the domains' code distributions: each latent's soft assignment softmax(-||z - e_k||^2 /
      reg_temperature) over the (detached) codebook, averaged over the batch and grid per domain, and
      the symmetric KL between the two histograms: zero exactly when they match.

Loss = image reconstruction + condition_weight x condition reconstruction + beta x commitment
(both domains) + reg_weight x regularizer. `encode` / `decode` are the VQ-VAE's (image codes);
`encode_condition` gives the condition's codes as (B, h*w) tokens in [0, codebook_size) (the
condition vocabulary IS the shared codebook) and `decode_condition` maps them back to an edge map.

Training protocol: `uses_condition = True`, so the trainer hands each batch's y (the edge maps of
`mnist-edges`) to `phase_loss(phase, x, step, cond=y)` and `eval_stats(x, cond=y)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from argen.conditioning import CondSpec
from argen.fields import spec
from argen.nn.autoencoder import ConvDecoder, ConvEncoder
from argen.nn.pixels import mean_stat, to_levels, to_unit
from argen.nn.quantize import perplexity
from argen.tokenizers.base import MAX_PIXEL_LEVELS, Stats, register_tokenizer
from argen.tokenizers.vqvae import TINY as VQVAE_TINY
from argen.tokenizers.vqvae import VQVAE, VQVAEConfig

REGULARIZERS = ("gaussian", "codes")
#: variance floor of the Gaussian regularizer (a constant latent channel must not divide by zero)
VAR_EPS = 1e-4

TINY = dict(VQVAE_TINY)


@dataclass
class IQVAEConfig(VQVAEConfig):
    """The VQ-VAE's fields (shared by both encoders) plus the condition's shape and the regularizer."""

    condition_channels: int = spec(1, ge=1)  # the condition is (condition_channels, H, W), H, W the image's
    condition_levels: int = spec(2, ge=2, le=MAX_PIXEL_LEVELS)  # edge maps: 2
    condition_weight: float = spec(1.0, ge=0)  # weight of the condition's reconstruction loss
    regularizer: str = spec("gaussian", choices=REGULARIZERS)
    reg_weight: float = spec(0.1, ge=0)  # 0 turns the regularizer off
    reg_temperature: float = spec(1.0, gt=0)  # "codes": temperature of the soft assignments


def gaussian_gap(zx: Tensor, zc: Tensor) -> Tensor:
    """Symmetric KL between per-channel Gaussians of two latent sets (n, D) and (m, D), mean over D."""
    mx, mc = zx.mean(0), zc.mean(0)
    vx = zx.var(0, unbiased=False) + VAR_EPS
    vc = zc.var(0, unbiased=False) + VAR_EPS
    d2 = (mx - mc).pow(2)
    return (((vx + d2) / vc + (vc + d2) / vx - 2.0) / 4.0).mean()


def code_histogram_gap(zx: Tensor, zc: Tensor, codebook: Tensor, temperature: float) -> Tensor:
    """Symmetric KL between the mean soft code assignments of two latent sets (n, D), (m, D)."""

    def histogram(z: Tensor) -> Tensor:
        d2 = (z * z).sum(1, keepdim=True) - 2.0 * z @ codebook.t() + (codebook * codebook).sum(1)[None]
        return torch.softmax(-d2 / temperature, dim=1).mean(0).clamp_min(1e-8)

    px, pc = histogram(zx), histogram(zc)
    return 0.5 * ((px * (px / pc).log()).sum() + (pc * (pc / px).log()).sum())


@register_tokenizer("iqvae", tiny=TINY)
class IQVAE(VQVAE):
    """IQ-VAE: image and condition (edge map) encoders quantized jointly against one EMA codebook."""

    config_class = IQVAEConfig
    config: IQVAEConfig
    #: the trainer passes each batch's y (the condition) to phase_loss / eval_stats as `cond`
    uses_condition: ClassVar[bool] = True

    def __init__(self, config: IQVAEConfig) -> None:
        super().__init__(config)
        cfg, cc = config, config.condition_channels
        self.cond_encoder = ConvEncoder(cc, cfg.channels, cfg.res_blocks, cfg.res_channels, self.quantizer.dim)
        self.cond_decoder = ConvDecoder(cc, cfg.channels, cfg.res_blocks, cfg.res_channels, self.quantizer.dim)

    # ----- the condition ------------------------------------------------------------------------
    @property
    def condition_shape(self) -> tuple[int, int, int]:
        _, h, w = self.image_shape
        return self.config.condition_channels, h, w

    @property
    def condition_spec(self) -> CondSpec:
        return CondSpec.image(self.condition_shape, levels=self.config.condition_levels)

    @property
    def condition_vocab(self) -> int:
        """The shared codebook: condition tokens are code indices."""
        return self.codebook_size

    @property
    def condition_len(self) -> int:
        return self.num_tokens

    def check_condition(self, c: Tensor) -> None:
        """Raise ValueError naming expected and given dtype / shape / range of a condition batch."""
        shape, top = self.condition_shape, self.config.condition_levels
        if not isinstance(c, Tensor):
            raise ValueError(f"expected the condition as a torch.Tensor, given {type(c).__name__}")
        if c.dtype != torch.long:
            raise ValueError(f"expected a condition of dtype torch.long, given {c.dtype}")
        if c.dim() != 4 or tuple(c.shape[1:]) != shape:
            raise ValueError(f"expected a condition of shape (B, {', '.join(map(str, shape))}), given {tuple(c.shape)}")
        if c.numel():
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= top:
                raise ValueError(f"expected condition values in [0, {top - 1}], given range [{lo}, {hi}]")

    def _cond_required(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ValueError(f"iqvae trains on (image, condition) pairs: expected cond of shape "
                             f"(B, {', '.join(map(str, self.condition_shape))}), given None")
        self.check_condition(cond)
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"expected one condition per image ({x.shape[0]}), given {cond.shape[0]}")
        return cond

    @torch.no_grad()
    def encode_condition(self, c: Tensor) -> Tensor:
        """(B, Cc, H, W) condition -> (B, h*w) long tokens (its codes in raster order)."""
        self.check_condition(c)
        codes = self.quantizer.encode(self.cond_encoder(to_unit(c, self.config.condition_levels)))
        return codes.flatten(1)

    @torch.no_grad()
    def decode_condition(self, tokens: Tensor) -> Tensor:
        """(B, h*w) condition tokens -> (B, Cc, H, W) long in [0, condition_levels): what they say."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[1] != self.condition_len:
            raise ValueError(f"expected condition tokens of shape (B, {self.condition_len}), "
                             f"given {tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")
        h, w = self.code_shape
        codes = tokens.view(-1, h, w)
        self.check_codes(codes)
        return to_levels(self.cond_decoder(self.quantizer.indices_to_latent(codes)), self.config.condition_levels)

    # ----- the regularizer --------------------------------------------------------------------------
    def _flat(self, z: Tensor) -> Tensor:
        flat = rearrange(z.float(), "b d h w -> (b h w) d")
        return F.normalize(flat, dim=1) if self.config.l2_normalize else flat

    def latent_gap(self, zx: Tensor, zc: Tensor) -> Tensor:
        """The variational regularizer between image latents zx and condition latents zc (B, D, h, w)."""
        fx, fc = self._flat(zx), self._flat(zc)
        if self.config.regularizer == "gaussian":
            return gaussian_gap(fx, fc)
        return code_histogram_gap(fx, fc, self.quantizer.codebook().detach(), self.config.reg_temperature)

    # ----- training -------------------------------------------------------------------------------
    def phase_loss(self, phase: str, x: Tensor, step: int, cond: Tensor | None = None) -> tuple[Tensor, Stats]:
        """Reconstruction of both domains + commitment + reg_weight x the latent gap (module doc)."""
        self.check_phase(phase)
        self.check_input(x)
        c = self._cond_required(x, cond)
        cfg, n = self.config, x.shape[0]
        xf, cf = to_unit(x, self.levels), to_unit(c, cfg.condition_levels)
        zx, zc = self.encoder(xf), self.cond_encoder(cf)
        q = self.quantizer(torch.cat([zx, zc]))  # joint: one codebook, one set of EMA statistics
        qx, qc = q.z_q.split(n)
        recon, crecon = self.decoder(qx), self.cond_decoder(qc)
        rec = self.reconstruction_loss(recon, xf)
        crec = self.reconstruction_loss(crecon, cf)
        gap = self.latent_gap(zx, zc)
        loss = rec + cfg.condition_weight * crec + q.loss + cfg.reg_weight * gap
        stats = self.model_stats(x, xf, recon, rec, q)
        stats["cond_rec_loss"] = mean_stat(crec, n)
        stats["latent_gap"] = mean_stat(gap, n)
        return loss, stats

    # ----- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def eval_stats(self, x: Tensor, cond: Tensor | None = None) -> Stats:
        """The VQ-VAE's image statistics; with `cond` also the condition's squared error ("cond_sq_err")
        and code histogram ("cond_codes")."""
        stats = super().eval_stats(x)
        if cond is None:
            return stats
        c = self._cond_required(x, cond)
        tokens = self.encode_condition(c)
        err = ((self.decode_condition(tokens) - c).double() / (self.config.condition_levels - 1)).pow(2).sum()
        hist = self.quantizer.histogram(tokens).double()
        stats["cond_sq_err"] = (err, torch.tensor(float(c.numel()), dtype=torch.float64, device=x.device))
        stats["cond_codes"] = (hist, torch.ones_like(hist))
        return stats

    def summarize(self, totals: Stats) -> dict[str, float]:
        """The VQ-VAE's numbers, plus cond_mse, cond_perplexity and shared_codes (codes used by both
        domains / codes used by either: how integrated the two vocabularies are)."""
        out = super().summarize(totals)
        if "cond_sq_err" in totals:
            err, count = (float(t) for t in totals["cond_sq_err"])
            out["cond_mse"] = err / max(count, 1.0)
        if "cond_codes" in totals:
            hist = totals["cond_codes"][0]
            out["cond_perplexity"] = float(perplexity(hist))
            if "codes" in totals:
                a, b = totals["codes"][0] > 0, hist > 0
                out["shared_codes"] = int((a & b).sum()) / max(int((a | b).sum()), 1)
        return out
