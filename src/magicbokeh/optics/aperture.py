"""Aperture shapes and their discrete, anti-aliased point-spread kernels.

A kernel is the image of one point light: the aperture shape scaled to the circle-of-confusion
radius ``radius`` (pixels), rasterised by area coverage (supersampling each pixel) and
normalised so that it sums to exactly 1 on the discrete grid. Kernels are ``(2R+1)x(2R+1)``
with ``R = ceil(radius)``; index ``[R, R]`` is the source pixel, rows go down the image and
columns to the right. A radius of 0 gives the 1x1 delta ``[[1]]``.

Angles follow the screen: ``rotation`` is in degrees, counter-clockwise as seen on the image,
and at ``rotation = 0`` one polygon corner points to the right (+x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from magicbokeh.errors import MagicBokehError

_MAX_CAT_EYE_SHIFT = 1.8  # in radii: keeps the cut aperture non-empty


@dataclass(frozen=True)
class Aperture:
    """Shape of the lens aperture.

    Attributes:
        blades: 0 for a circular aperture, >= 3 for a regular polygon with that many corners.
        rotation: polygon rotation in degrees, counter-clockwise on screen.
        roundness: 0 = straight polygon sides, 1 = circle; in between the boundary radius is
            the linear blend of the polygon's and its circumscribed circle's.
        cat_eye: strength of mechanical vignetting; 0 = none. At normalised image position
            ``(ox, oy)`` the aperture is intersected with a circular pupil of the same radius,
            the two centres ``cat_eye * radius * (ox, oy)`` apart, so corner disks become
            lens-shaped ("cat's eye") with the long axis tangential.
    """

    blades: int = 0
    rotation: float = 0.0
    roundness: float = 0.0
    cat_eye: float = 0.0

    def __post_init__(self) -> None:
        if self.blades != 0 and self.blades < 3:
            raise MagicBokehError(
                f"aperture blades={self.blades} is invalid: use 0 for a circle or 3 or more"
            )
        if not math.isfinite(self.rotation):
            raise MagicBokehError("aperture rotation must be a finite number of degrees")
        if not 0.0 <= self.roundness <= 1.0:
            raise MagicBokehError(
                f"aperture roundness={self.roundness} is out of range: use a value in [0, 1]"
            )
        if not (math.isfinite(self.cat_eye) and self.cat_eye >= 0.0):
            raise MagicBokehError(f"cat_eye={self.cat_eye} is invalid: use a value >= 0")

    def kernel(
        self,
        radius: float,
        *,
        offset: tuple[float, float] = (0.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Kernel of circle-of-confusion radius ``radius`` px, ``(2R+1)x(2R+1)``, sum 1.

        ``offset`` is the source's normalised image position (x right, y down, each in
        [-1, 1]); it only matters with ``cat_eye > 0``.
        """
        if not (math.isfinite(radius) and radius >= 0.0):
            raise MagicBokehError(f"blur radius {radius} is invalid: use a finite value >= 0")
        ox, oy = (float(offset[0]), float(offset[1])) if self.cat_eye > 0 else (0.0, 0.0)
        table = _kernel_table(self, round(float(radius), 5), round(ox, 4), round(oy, 4))
        return table.to(dtype=dtype, device=device)

    def inside(self, x: Tensor, y: Tensor, radius: float, offset: tuple[float, float]) -> Tensor:
        """Mask of points ``(x, y)`` (pixels from the kernel centre, y down) inside the shape."""
        shift = min(self.cat_eye * math.hypot(*offset), _MAX_CAT_EYE_SHIFT)
        norm = math.hypot(*offset)
        ux, uy = (offset[0] / norm, offset[1] / norm) if norm > 0 else (0.0, 0.0)
        half_x, half_y = 0.5 * shift * radius * ux, 0.5 * shift * radius * uy
        ax, ay = x + half_x, y + half_y  # main aperture centred at -shift/2
        rho = torch.sqrt(ax * ax + ay * ay)
        inside = rho <= radius * self._boundary(torch.atan2(-ay, ax))
        if shift > 0:
            px, py = x - half_x, y - half_y  # vignetting pupil centred at +shift/2
            inside &= px * px + py * py <= radius * radius
        return inside

    def _boundary(self, theta: Tensor) -> Tensor:
        """Boundary radius (fraction of the circumscribed radius) at screen angle ``theta``."""
        if self.blades == 0:
            return torch.ones_like(theta)
        sector = 2.0 * math.pi / self.blades
        phase = torch.remainder(theta - math.radians(self.rotation), sector) - 0.5 * sector
        polygon = math.cos(0.5 * sector) / torch.cos(phase)
        return (1.0 - self.roundness) * polygon + self.roundness


@lru_cache(maxsize=512)
def _kernel_table(aperture: Aperture, radius: float, ox: float, oy: float) -> Tensor:
    """Area-coverage kernel in float64 on the CPU (cached); see :meth:`Aperture.kernel`."""
    if radius <= 0.0:
        return torch.ones(1, 1, dtype=torch.float64)
    half = math.ceil(radius - 1e-9)
    samples = 16 if radius < 4 else 8
    sub = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples - 0.5
    centres = torch.arange(-half, half + 1, dtype=torch.float64)
    coords = (centres[:, None] + sub[None, :]).reshape(-1)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    mask = aperture.inside(x, y, radius, (ox, oy)).to(torch.float64)
    size = 2 * half + 1
    coverage = mask.reshape(size, samples, size, samples).mean(dim=(1, 3))
    total = coverage.sum()
    if total <= 0:
        delta = torch.zeros(size, size, dtype=torch.float64)
        delta[half, half] = 1.0
        return delta
    return coverage / total
