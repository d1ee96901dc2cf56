"""The MagicBokeh training tasks: ``train sr`` (stage 1) and ``train bokeh`` (alternating stage).

Parameter parts of :class:`~magicbokeh.model.network.MagicBokehNetwork` (:func:`parameter_parts`):
``sr_lora`` (UNet LoRA, both adapters), ``conv_in`` (the UNet's input convolution, trained in
full as the release stores it), ``vae_lora`` (VAE-encoder LoRA), ``controlnet`` (the defocus
injector, all of it), ``bokeh_lora`` (the focus-aware attention's LoRA), ``vsd_lora`` (the LoRA
of the VSD regulariser's ``unet_update``, ``train sr --vsd-weight`` only: :mod:`magicbokeh.train.
vsd`), ``frozen`` (the rest, the regulariser's stock UNets included).

Phases:

- ``sr`` of ``train sr``: sr_lora + conv_in + vae_lora at ``--lr``; with ``--vsd-weight`` > 0
  also group ``vsd`` (vsd_lora at ``--lr``, its gradient norm clipped on its own, as OSEDiff's
  second AdamW), trained by the regulariser's diffusion loss;
- ``bokeh`` of ``train bokeh``: controlnet + bokeh_lora at ``--lr-bokeh``, on ``synth`` pairs:
  LQ all-in-focus in, HQ bokeh out, defocus m = |d − d_f|·K/32 fed as 2m − 1, focus mask
  m ≤ 0.1 (none with ``--no-fama``);
- ``sr`` of ``train bokeh``: sr_lora + conv_in at ``--lr-sr``; the VAE-encoder LoRA stays as
  stage 1 left it;
- ``joint`` (``--joint``, the paper's "w/o Strategy"): both groups at their rates, on batches
  of ⌈B/2⌉ bokeh and ⌊B/2⌋ SR items.

SR items: HQ crops (random crop, horizontal flip) degraded on the training device with the
Real-ESRGAN pipeline (scale 4, resized back), defocus all zero (fed as −1), no attention mask
(the paper's "M set to 0"). Loss: λ_l2·MSE + λ_lpips·LPIPS-VGG on [−1, 1] images;
``train sr --vsd-weight W`` adds W·VSD + ``--vsd-diffusion-weight``·(the regulariser's
diffusion loss) in training steps (not in validation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from magicbokeh.errors import MagicBokehError
from magicbokeh.train.schedule import PhaseCycle, parse_cycle
from magicbokeh.train.task import (
    ParamGroup,
    Phase,
    StepOutput,
    StreamSpec,
    TrainingTask,
    ValidationSet,
)
from magicbokeh.train.vsd import REGULARISER_PREFIX

__all__ = ["BokehTask", "SRTask", "parameter_parts"]

PARTS = ("sr_lora", "conv_in", "vae_lora", "controlnet", "bokeh_lora", "vsd_lora", "frozen")


def parameter_parts(network: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The network's named parameters by part (see the module docstring)."""
    parts: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in PARTS}
    for name, param in network.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        if name.startswith(REGULARISER_PREFIX):
            part = "vsd_lora" if is_lora else "frozen"
        elif name.startswith("controlnet."):
            part = "controlnet"
        elif name.startswith("unet.") and ".processor." in name:
            part = "bokeh_lora"
        elif name.startswith("unet.") and is_lora:
            part = "sr_lora"
        elif name.startswith("unet.conv_in."):
            part = "conv_in"
        elif name.startswith("vae.") and is_lora:
            part = "vae_lora"
        else:
            part = "frozen"
        parts[part].append((name, param))
    return parts


def _check_sr_sources(sources: list[str], flag: str) -> None:
    """Refuse a synthetic bokeh dataset given as photos."""
    from magicbokeh.data.store import HEADER_NAME

    for source in sources:
        if (Path(source) / HEADER_NAME).is_file():
            raise MagicBokehError(
                f"{flag} {source} is a `magicbokeh synth` bokeh dataset; give photo folders "
                "(or .txt lists) for SR training and synth folders as --bokeh-data"
            )


def _sr_dataset(sources: list[str], settings: dict[str, Any], flag: str):
    from magicbokeh.data.datasets import SRPairs

    _check_sr_sources(sources, flag)
    return SRPairs(
        sources,
        crop=int(settings["resolution"]),
        flip=True,
        scale=int(settings["degradation_scale"]),
        seed=int(settings["seed"]),
        degrade=False,
    )


def _bokeh_dataset(source: str, settings: dict[str, Any], flag: str):
    from magicbokeh.data.datasets import BokehPairs

    if not Path(source).is_dir():
        raise MagicBokehError(f"{flag} {source} is not a folder; give a `magicbokeh synth` folder")
    dataset = BokehPairs(
        source, crop=int(settings["resolution"]), flip=True, seed=int(settings["seed"])
    )
    header = dataset.store.read_header() or {}
    size = (header.get("settings") or {}).get("size")
    if isinstance(size, int) and size < int(settings["resolution"]):
        raise MagicBokehError(
            f"{flag} {source} holds {size}-px samples, smaller than --resolution "
            f"{settings['resolution']}; use a smaller --resolution or synthesise larger samples"
        )
    return dataset


class _MagicBokehTask(TrainingTask):
    """What ``train sr`` and ``train bokeh`` share: the network, inputs, loss and samples."""

    changeable_settings = frozenset({"lpips_weights"})
    #: whether the focus mask reaches the attention (stage 1 never masks).
    masks_attention = False

    @property
    def vsd_weight(self) -> float:
        """λ of the VSD regulariser (``train sr --vsd-weight``; 0 = off)."""
        return float(self.settings.get("vsd_weight") or 0.0)

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.network = None
        self._lpips: nn.Module | None = None
        self._datasets: dict[str, Any] = {}

    # -------------------------------------------------------------------------- checks
    def _check_common(self) -> None:
        s = self.settings
        if int(s["resolution"]) < 16 or int(s["resolution"]) % 8:
            raise MagicBokehError(
                f"--resolution must be a multiple of 8 (≥ 16), not {s['resolution']}"
            )
        from magicbokeh.degrade.pipeline import minimum_hr_size

        scale = int(s["degradation_scale"])
        if scale < 1 or int(s["resolution"]) < minimum_hr_size(scale):
            raise MagicBokehError(
                f"--degradation-scale {scale} needs --resolution ≥ {minimum_hr_size(max(scale, 1))}"
            )
        if float(s["lpips_weight"]) < 0 or float(s["l2_weight"]) < 0:
            raise MagicBokehError("--lpips-weight and --l2-weight must not be negative")
        if float(s["lpips_weight"]) > 0:
            self._lpips_model()

    def _lpips_model(self) -> nn.Module:
        if self._lpips is None:
            try:
                from magicbokeh.metrics.lpips import LPIPS
            except ImportError:
                raise MagicBokehError(
                    "the LPIPS loss is not available in this installation; train with "
                    "--lpips-weight 0 or update magicbokeh"
                ) from None
            folder = self.settings.get("lpips_weights")
            model = LPIPS.from_pretrained(net="vgg", folder=folder)
            model.eval().requires_grad_(False)
            self._lpips = model
        return self._lpips

    # --------------------------------------------------------------------------- model
    def load_model(self, folder: Path) -> nn.Module:
        from magicbokeh.model.network import MagicBokehNetwork

        network = MagicBokehNetwork.from_pretrained(folder, torch_dtype=torch.float32)
        self.network = network
        return network

    def prepare_model(self, model: nn.Module, gradient_checkpointing: bool) -> None:
        if gradient_checkpointing:
            model.enable_gradient_checkpointing()

    # --------------------------------------------------------------------------- steps
    def _latent_noise(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        if self.settings["latent"] != "sample":
            return None
        net = self.network
        scale = net.latent_scale
        shape = (
            image.shape[0],
            net.vae.config.latent_channels,
            image.shape[-2] // scale,
            image.shape[-1] // scale,
        )
        return torch.randn(shape, generator=generator, device=image.device)

    def _sr_items(self, batch: dict, device: torch.device, generator: torch.Generator):
        """(lq, hq, defocus input, focus mask) of SR items, images in [0, 1]."""
        from magicbokeh.degrade.pipeline import degrade

        hq = batch["hq"].to(device)
        lq = degrade(
            hq,
            generator=generator,
            scale=int(self.settings["degradation_scale"]),
            resize_back=True,
        )
        zeros = torch.zeros_like(hq[:, :1])
        return lq, hq, zeros * 2 - 1, torch.ones_like(zeros)

    def _bokeh_items(self, batch: dict, device: torch.device):
        """(lq, bokeh target, defocus input 2m − 1, focus mask m ≤ 0.1) of bokeh items."""
        from magicbokeh.focus import focus_mask, learned_defocus

        disparity = batch["disparity"].to(device)
        k = batch["K"].to(device).view(-1, 1, 1, 1)
        d_f = batch["d_f"].to(device).view(-1, 1, 1, 1)
        defocus = learned_defocus(disparity, d_f, k)
        mask = focus_mask(disparity, d_f, k)
        return batch["lq"].to(device), batch["bokeh"].to(device), defocus * 2 - 1, mask

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Per-item λ_l2·MSE + λ_lpips·LPIPS (B-vector) and the per-item terms."""
        s = self.settings
        output, target = output.float(), target.float()
        l2 = (output - target).square().flatten(1).mean(1)
        terms = {"l2": l2}
        loss = float(s["l2_weight"]) * l2
        if float(s["lpips_weight"]) > 0:
            lpips = self._lpips_model().to(output.device)
            with torch.autocast(output.device.type, enabled=False):
                perceptual = lpips(output, target).flatten()
            terms["lpips"] = perceptual
            loss = loss + float(s["lpips_weight"]) * perceptual
        return loss, terms

    def _run(
        self,
        model: nn.Module,
        parts: list[tuple[str, tuple]],
        generator: torch.Generator,
        images: bool,
    ) -> StepOutput:
        """Forward the concatenated items of ``parts`` [(name, (lq, target, defocus, mask))]."""
        lq = torch.cat([p[1][0] for p in parts])
        target = torch.cat([p[1][1] for p in parts])
        defocus = torch.cat([p[1][2] for p in parts])
        # SR-only batches get no mask at all (the paper's "M set to 0"); mixed batches give
        # their SR items an all-in-focus mask, which adds no bias.
        masked = self.masks_attention and any(name == "bokeh" for name, _ in parts)
        mask = torch.cat([p[1][3] for p in parts]) if masked else None
        latent_noise = self._latent_noise(lq, generator)
        regulariser: dict[str, torch.Tensor] = {}
        if self.vsd_weight > 0 and model.training:  # training steps, not validation
            outputs = model(
                lq * 2 - 1, defocus, mask, latent_noise=latent_noise, vsd_generator=generator
            )
            output = outputs.pop("image")
            regulariser = outputs
        else:
            output = model(lq * 2 - 1, defocus, mask, latent_noise=latent_noise)
        per_item, terms = self._loss(output, target * 2 - 1)
        result = StepOutput(loss=per_item.mean(), terms={k: v.mean() for k, v in terms.items()})
        if regulariser:
            s = self.settings
            result.loss = (
                result.loss
                + float(s["vsd_weight"]) * regulariser["vsd"]
                + float(s["vsd_diffusion_weight"]) * regulariser["vsd_diffusion"]
            )
            result.terms.update(regulariser)
        if len(parts) > 1:
            start = 0
            for name, items in parts:
                count = items[0].shape[0]
                result.terms[f"loss_{name}"] = per_item[start : start + count].mean()
                start += count
        if images:
            result.images = {
                "input": lq.detach(),
                "output": ((output.detach().float() + 1) / 2).clamp(0, 1),
                "target": target.detach(),
            }
        return result

    def step(
        self,
        model: nn.Module,
        phase: str,
        batches: dict[str, dict],
        *,
        device: torch.device,
        generator: torch.Generator,
        images: bool,
    ) -> StepOutput:
        parts = []
        if phase in ("bokeh", "joint"):
            parts.append(("bokeh", self._bokeh_items(batches["bokeh"], device)))
        if phase in ("sr", "joint"):
            parts.append(("sr", self._sr_items(batches["sr"], device, generator)))
        if not parts:
            raise ValueError(f"unknown phase {phase!r}")
        return self._run(model, parts, generator, images)


class SRTask(_MagicBokehTask):
    """``train sr``: stage-1 SR pre-training from a Stable Diffusion 2.1-base folder."""

    name = "sr"

    def check(self) -> None:
        from magicbokeh.train.base_model import check_base_folder

        s = self.settings
        if s.get("base") is None:
            raise MagicBokehError("give the Stable Diffusion 2.1-base folder with --base DIR")
        if not s.get("data"):
            raise MagicBokehError("give the SR training photos with --data DIR [DIR ...]")
        if float(s["lr"]) <= 0:
            raise MagicBokehError("--lr must be positive")
        check_base_folder(Path(s["base"]))
        self._check_common()
        if self.vsd_weight < 0 or float(s["vsd_diffusion_weight"]) < 0:
            raise MagicBokehError("--vsd-weight and --vsd-diffusion-weight must not be negative")
        if self.vsd_weight > 0:
            from magicbokeh.train.vsd import check_regulariser_base

            if int(s["vsd_rank"]) < 1:
                raise MagicBokehError(f"--vsd-rank must be at least 1, got {s['vsd_rank']}")
            if float(s["vsd_cfg"]) < 0:
                raise MagicBokehError("--vsd-cfg must not be negative")
            check_regulariser_base(Path(s["base"]))
        self._datasets["sr"] = _sr_dataset(s["data"], s, "--data")
        if s.get("val_data"):
            self._datasets["val_sr"] = _sr_dataset(s["val_data"], s, "--val-data")

    def write_init(self, folder: Path) -> None:
        from magicbokeh.train.base_model import build_initial_network

        s = self.settings
        network = build_initial_network(
            Path(s["base"]),
            rank_unet=int(s["rank_unet"]),
            rank_vae=int(s["rank_vae"]),
            rank_bokeh=int(s["rank_bokeh"]),
            seed=int(s["seed"]),
        )
        network.save_pretrained(folder / "network")
        source = {"base": s["base"], "seed": s["seed"]}
        (folder / "source.json").write_text(json.dumps(source, indent=2) + "\n")

    def load_model(self, folder: Path) -> nn.Module:
        """The network; with ``--vsd-weight`` > 0 the network and the VSD regulariser built
        from the base folder (:class:`~magicbokeh.train.vsd.RegularisedNetwork`)."""
        network = super().load_model(folder)
        if self.vsd_weight <= 0:
            return network
        from magicbokeh.train.vsd import RegularisedNetwork, VSDRegulariser

        s = self.settings
        fix_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            s["mixed_precision"], torch.float32
        )
        regulariser = VSDRegulariser.from_base(
            Path(s["base"]),
            dict(network.config.scheduler_config),
            rank=int(s["vsd_rank"]),
            prompt=str(s["vsd_prompt"]),
            negative_prompt=str(s["vsd_negative_prompt"]),
            cfg=float(s["vsd_cfg"]),
            fix_dtype=fix_dtype,
            seed=int(s["seed"]),
        )
        return RegularisedNetwork(network, regulariser)

    def phase_names(self) -> tuple[str, ...]:
        return ("sr",)

    def phases(self, model: nn.Module) -> dict[str, Phase]:
        parts = parameter_parts(model)
        params = parts["sr_lora"] + parts["conv_in"] + parts["vae_lora"]
        lr = float(self.settings["lr"])
        groups = {"sr": ParamGroup(params, lr)}
        if parts["vsd_lora"]:
            groups["vsd"] = ParamGroup(parts["vsd_lora"], lr, own_clipping=True)
        return {"sr": Phase("sr", groups, ("sr",))}

    def streams(self) -> dict[str, StreamSpec]:
        return {"sr": StreamSpec(self._datasets["sr"], int(self.settings["batch_size"]))}

    def validation_sets(self) -> dict[str, ValidationSet]:
        if "val_sr" not in self._datasets:
            return {}
        return {"sr": ValidationSet(self._datasets["val_sr"], "sr", "sr")}


class BokehTask(_MagicBokehTask):
    """``train bokeh``: the alternating bokeh/SR stage (or ``--joint``) from a trained model."""

    name = "bokeh"

    @property
    def masks_attention(self) -> bool:  # type: ignore[override]
        return not self.settings["no_fama"]

    def check(self) -> None:
        from magicbokeh.train.model_runs import resolve_init

        s = self.settings
        if s.get("init") is None:
            raise MagicBokehError(
                "give the starting model with --init (a model folder, or a `train sr` run or "
                "checkpoint)"
            )
        if s.get("bokeh_data") is None:
            raise MagicBokehError("give the synthetic bokeh pairs with --bokeh-data DIR")
        if not s.get("sr_data"):
            raise MagicBokehError("give the SR training photos with --sr-data DIR [DIR ...]")
        if float(s["lr_bokeh"]) <= 0 or float(s["lr_sr"]) <= 0:
            raise MagicBokehError("--lr-bokeh and --lr-sr must be positive")
        if s["joint"] and int(s["batch_size"]) < 2:
            raise MagicBokehError(
                "--joint mixes bokeh and SR items in a batch: use --batch-size ≥ 2"
            )
        self._init = resolve_init(Path(s["init"]))
        self.cycle()
        self._check_common()
        self._datasets["bokeh"] = _bokeh_dataset(s["bokeh_data"], s, "--bokeh-data")
        self._datasets["sr"] = _sr_dataset(s["sr_data"], s, "--sr-data")
        if s.get("val_bokeh_data"):
            self._datasets["val_bokeh"] = _bokeh_dataset(s["val_bokeh_data"], s, "--val-bokeh-data")
        if s.get("val_sr_data"):
            self._datasets["val_sr"] = _sr_dataset(s["val_sr_data"], s, "--val-sr-data")

    def write_init(self, folder: Path) -> None:
        network, source = self._init.load()
        network.save_pretrained(folder / "network")
        (folder / "source.json").write_text(json.dumps(source, indent=2) + "\n")

    def phase_names(self) -> tuple[str, ...]:
        return ("joint",) if self.settings["joint"] else ("bokeh", "sr")

    def cycle(self) -> PhaseCycle:
        if self.settings["joint"]:
            return PhaseCycle((("joint", 1),))
        return parse_cycle(self.settings["cycle"], ("bokeh", "sr"))

    def phases(self, model: nn.Module) -> dict[str, Phase]:
        parts = parameter_parts(model)
        s = self.settings
        bokeh = ParamGroup(parts["controlnet"] + parts["bokeh_lora"], float(s["lr_bokeh"]))
        sr = ParamGroup(parts["sr_lora"] + parts["conv_in"], float(s["lr_sr"]))
        if s["joint"]:
            return {"joint": Phase("joint", {"bokeh": bokeh, "sr": sr}, ("bokeh", "sr"))}
        return {
            "bokeh": Phase("bokeh", {"bokeh": bokeh}, ("bokeh",)),
            "sr": Phase("sr", {"sr": sr}, ("sr",)),
        }

    def streams(self) -> dict[str, StreamSpec]:
        batch = int(self.settings["batch_size"])
        if self.settings["joint"]:
            sizes = {"bokeh": (batch + 1) // 2, "sr": batch // 2}
        else:
            used = set(self.cycle().phases)
            sizes = {name: batch for name in ("bokeh", "sr") if name in used}
        return {name: StreamSpec(self._datasets[name], size) for name, size in sizes.items()}

    def validation_sets(self) -> dict[str, ValidationSet]:
        sets = {}
        if "val_bokeh" in self._datasets:
            sets["bokeh"] = ValidationSet(self._datasets["val_bokeh"], "bokeh", "bokeh")
        if "val_sr" in self._datasets:
            sets["sr"] = ValidationSet(self._datasets["val_sr"], "sr", "sr")
        return sets
