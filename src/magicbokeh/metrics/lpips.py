"""LPIPS (Zhang et al. 2018, version 0.1) in plain torch: VGG16 and AlexNet, no torchvision.

Computes exactly what the ``lpips`` package (0.1.4) computes with ``version="0.1"`` and
``lpips=True``, bit for bit on CPU float32:

1. inputs ``N×3×H×W`` sRGB in [-1, 1] (or [0, 1] with ``normalize=True``, mapped by 2x − 1);
2. scaling: ``(x − shift) / scale`` per RGB channel;
3. the torchvision ``features`` network, tapped after five ReLUs (VGG16: relu1_2, relu2_2,
   relu3_3, relu4_3, relu5_3; AlexNet: relu1..relu5);
4. each tap unit-normalised over channels, ``f / (‖f‖₂ + 1e-10)``;
5. squared difference, a 1×1 linear head (``C → 1``, no bias), then the spatial mean (or a
   bilinear upsampling to the input size with ``spatial=True``);
6. the five terms added in order.

Weights: the backbone comes from a torchvision checkpoint (``vgg16-397923af.pth``,
``alexnet-owt-7be5be79.pth``) or a safetensors file in the same key layout; only its
``features.*`` keys are used. The heads come from the lpips package's ``v0.1/{vgg,alex}.pth``
(a plain tensor dict, keys ``lin{k}.model.1.weight``) or a safetensors file with those keys.
``magicbokeh download --lpips`` installs both into the model home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from magicbokeh.errors import MagicBokehError

__all__ = ["LPIPS", "NETS", "load_backbone_state", "load_heads_state", "unit_normalize"]

Net = Literal["vgg", "alex"]

#: Per-RGB-channel shift and scale of LPIPS version 0.1's scaling layer.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    layers += [nn.Conv2d(512, 512, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
    )


#: net → (features builder, indices in ``features`` whose outputs are tapped, tap channels).
NETS: dict[str, tuple] = {
    "vgg": (_vgg16_features, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
    "alex": (_alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
}


def _check_net(net: str) -> None:
    if net not in NETS:
        raise MagicBokehError(f"unknown LPIPS network {net!r}: use 'vgg' or 'alex'")


def _read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A flat name → tensor dict from a safetensors file or a plain-tensor ``.pth`` (told apart
    by content, not by name)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MagicBokehError(f"{what} file {file} does not exist; check the path")
    with open(file, "rb") as handle:
        head = handle.read(9)
    try:
        if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, or not a tensor dict
        raise MagicBokehError(
            f"cannot read {what} file {file} ({type(error).__name__}); give a torchvision-style "
            ".pth state dict or a .safetensors file"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MagicBokehError(f"{what} file {file} is not a plain dict of tensors")
    return state


def load_backbone_state(path: str | Path, net: Net = "vgg") -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision checkpoint, keyed ``<index>.<weight|bias>``
    (float32; the classifier and anything else is dropped).

    Raises:
        MagicBokehError: unreadable file, or keys/shapes that are not torchvision's ``net``.
    """
    _check_net(net)
    state = _read_tensors(path, f"LPIPS {net} backbone")
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    shapes = _backbone_shapes(net)
    wrong = sorted(k for k in shapes if k not in features or tuple(features[k].shape) != shapes[k])
    if wrong:
        raise MagicBokehError(
            f"{path} is not a torchvision {net} checkpoint: features.{wrong[0]} is missing or has "
            f"the wrong shape ({len(wrong)} tensors differ)"
        )
    return {k: features[k].float() for k in shapes}


def _backbone_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """``<index>.<weight|bias>`` → shape of the tapped part of torchvision's ``features``."""
    with torch.device("meta"):
        features = NETS[net][0]()
    return {k: tuple(v.shape) for k, v in features.state_dict().items()}


def load_heads_state(path: str | Path, net: Net = "vgg") -> list[torch.Tensor]:
    """The five head weights (``1×C×1×1``) of the lpips package's ``v0.1/<net>.pth``.

    Raises:
        MagicBokehError: unreadable file, or keys/shapes that are not the ``net`` heads.
    """
    _check_net(net)
    state = _read_tensors(path, f"LPIPS {net} heads")
    heads = []
    for k, channels in enumerate(NETS[net][2]):
        weight = state.get(f"lin{k}.model.1.weight")
        if weight is None or tuple(weight.shape) != (1, channels, 1, 1):
            raise MagicBokehError(
                f"{path} does not hold the LPIPS v0.1 {net} heads: lin{k}.model.1.weight should "
                f"be 1×{channels}×1×1"
            )
        heads.append(weight.float())
    return heads


class LPIPS(nn.Module):
    """The LPIPS distance; frozen, in eval mode, differentiable with respect to its inputs.

    ``LPIPS(net)`` has random weights (for tests); use :meth:`from_files` or
    :meth:`from_pretrained` for the real metric.

    Args:
        net: ``"vgg"`` (VGG16, the usual training loss) or ``"alex"`` (AlexNet, the usual
            evaluation metric).
        spatial: return the per-pixel distance map instead of its per-image value.
    """

    def __init__(self, net: Net = "vgg", spatial: bool = False) -> None:
        super().__init__()
        _check_net(net)
        build, taps, channels = NETS[net]
        self.net, self.spatial, self.taps = net, spatial, taps
        self.features = build()[: taps[-1] + 1]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """LPIPS always stays in eval mode (it has no layers that train differently)."""
        return super().train(False)

    @classmethod
    def from_files(
        cls,
        backbone: str | Path,
        heads: str | Path,
        net: Net = "vgg",
        spatial: bool = False,
    ) -> LPIPS:
        """LPIPS with a torchvision-layout ``backbone`` file and the lpips package's ``heads``.

        Raises:
            MagicBokehError: a file is missing, unreadable, or holds another network.
        """
        model = cls(net, spatial)
        model.features.load_state_dict(load_backbone_state(backbone, net))
        for head, weight in zip(model.heads, load_heads_state(heads, net), strict=True):
            head.weight.copy_(weight)
        return model

    @classmethod
    def from_pretrained(
        cls, net: Net = "vgg", folder: str | Path | None = None, spatial: bool = False
    ) -> LPIPS:
        """LPIPS with the weights ``magicbokeh download --lpips`` installed.

        Args:
            folder: where the weights are (default ``<model home>/lpips``).

        Raises:
            MagicBokehError: the weights are not installed (the message says how to get them).
        """
        from magicbokeh.metrics.lpips_weights import installed_files

        backbone, heads = installed_files(net, folder)
        return cls.from_files(backbone, heads, net, spatial)

    def scaling(self, x: torch.Tensor) -> torch.Tensor:
        """Version 0.1's input scaling of an ``N×3×H×W`` image in [-1, 1]."""
        return (x - self.shift) / self.scale

    def tap_features(self, scaled: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's five tapped activations (after ReLU) of a :meth:`scaling` output."""
        x, out = scaled, []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out

    def forward(
        self,
        in0: torch.Tensor,
        in1: torch.Tensor,
        normalize: bool = False,
        per_layer: bool = False,
    ) -> torch.Tensor:
        """The distance between ``in0`` and ``in1``.

        Args:
            in0, in1: ``N×3×H×W`` sRGB images in [-1, 1] (in [0, 1] with ``normalize=True``);
                ``N`` may be 1 on one side (broadcast).
            normalize: inputs are in [0, 1].
            per_layer: return the five per-layer terms instead of their sum.

        Returns:
            ``N×1×1×1`` (``N×1×H×W`` when spatial); with ``per_layer`` the terms stacked on
            dim 1, ``N×5×1×1`` (``N×5×H×W``), whose in-order sum is the distance.
        """
        if in0.ndim != 4 or in0.shape[1] != 3 or in1.ndim != 4 or in1.shape[1] != 3:
            raise MagicBokehError(
                f"LPIPS needs N×3×H×W images, got {tuple(in0.shape)} and {tuple(in1.shape)}"
            )
        if normalize:
            in0, in1 = 2 * in0 - 1, 2 * in1 - 1
        feats0 = self.tap_features(self.scaling(in0))
        feats1 = self.tap_features(self.scaling(in1))
        terms = []
        for head, f0, f1 in zip(self.heads, feats0, feats1, strict=True):
            diff = (unit_normalize(f0) - unit_normalize(f1)) ** 2
            out = head(diff)
            if self.spatial:
                out = F.interpolate(out, size=in0.shape[2:], mode="bilinear", align_corners=False)
            else:
                out = out.mean([2, 3], keepdim=True)
            terms.append(out)
        if per_layer:
            return torch.cat(terms, dim=1)
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


def unit_normalize(features: torch.Tensor) -> torch.Tensor:
    """Unit length over channels: ``f / (sqrt(Σ_c f²) + 1e-10)``."""
    return features / (torch.sqrt(torch.sum(features**2, dim=1, keepdim=True)) + EPS)
