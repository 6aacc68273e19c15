"""Metrics: bits/dim here; sample-quality metrics (FID, IS, KID, FVD) in their own modules."""
from argen.metrics.bpd import bits_per_dim, evaluate_bpd

__all__ = ["bits_per_dim", "evaluate_bpd"]
