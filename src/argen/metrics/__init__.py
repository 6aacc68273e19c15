"""Metrics: bits/dim here; sample-quality metrics (FID, IS, KID, FVD) in their own modules."""
from argen.metrics.bpd import bits_per_dim, evaluate_bpd
from argen.metrics.features import load_feature_extractor
from argen.metrics.frechet import GaussianStats, StatsAccumulator, frechet_distance
from argen.metrics.quality import reference_statistics, sample_quality
from argen.metrics.scores import inception_score, kernel_inception_distance, precision_recall

__all__ = ["bits_per_dim", "evaluate_bpd"]
__all__ += ["GaussianStats", "StatsAccumulator", "frechet_distance", "inception_score", "kernel_inception_distance",
            "load_feature_extractor", "precision_recall", "reference_statistics", "sample_quality"]
