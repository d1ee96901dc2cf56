"""Training data: synthetic bokeh scenes, their on-disk datasets, and PyTorch datasets.

- :func:`synthesize` (``magicbokeh synth``): compose two cut-out foregrounds over a
  background, ray-trace the bokeh ground truth, degrade the all-in-focus image into the LQ
  input, and write everything with a manifest (resumable, parallel, reproducible).
- :class:`BokehPairs`, :class:`SRPairs`, :class:`EBBPairs`: ``torch.utils.data.Dataset`` s
  for synthetic bokeh pairs, on-the-fly SR pairs and real EBB!-style pairs.

See ``docs/training_data.md``.
"""

from __future__ import annotations

from magicbokeh.data.datasets import BokehPairs, EBBPairs, SRPairs
from magicbokeh.data.scene import ScenePlan, SourceInfo, build_layers, sample_plan
from magicbokeh.data.store import DatasetStore
from magicbokeh.data.synth import (
    SynthReport,
    SynthSettings,
    preview_sheet,
    render_plan,
    render_sample,
    scan_sources,
    synthesize,
    write_preview,
)

__all__ = [
    "BokehPairs",
    "DatasetStore",
    "EBBPairs",
    "SRPairs",
    "ScenePlan",
    "SourceInfo",
    "SynthReport",
    "SynthSettings",
    "build_layers",
    "preview_sheet",
    "render_plan",
    "render_sample",
    "sample_plan",
    "scan_sources",
    "synthesize",
    "write_preview",
]
