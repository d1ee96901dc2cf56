"""Depth: learned estimators, a weight-free fallback, and checkpoint conversion.

Every estimator returns disparity ``B×1×H×W`` in [0, 1], larger = nearer.
"""
