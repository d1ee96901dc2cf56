"""The assembled MagicBokeh network: one denoising step at t = 999 on a tile.

Parts: :class:`~magicbokeh.model.unet.MagicBokehUNet` with the SR LoRA and the focus-aware
attention processors, :class:`~magicbokeh.model.controlnet.MagicBokehControlNet` (the defocus
injector), and a stock ``AutoencoderKL`` with the VAE-encoder LoRA (the decoder is stock).

Per tile (``forward``):

1. z = VAE posterior mode (or a sample, given noise) of the image · scaling_factor
   (B×4×H/8×W/8);
2. c = controlnet.embed_condition(defocus repeated to 3 channels);
3. residuals = controlnet(z, t, c) (12 tensors);
4. ε = unet(z, t, residuals, focus_mask);
5. x0 = (z − √(1−ᾱ_t)·ε)/√ᾱ_t in float32, ᾱ from the DDPM scheduler config;
6. image = VAE decode(x0 / scaling_factor), clamped to [−1, 1].

Storage format (a folder): ``config.json`` (this class's config: part configs, LoRA ranks and
targets) and ``diffusion_pytorch_model.safetensors`` (the whole state dict, LoRA and bokeh
processor weights included). A parent folder holding a ``network/`` subfolder is accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from magicbokeh.extras import LEARNED_ENGINE, require

try:
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file
except (ImportError, RuntimeError):  # diffusers wraps failed lazy imports in RuntimeError
    require("diffusion", "the learned engine", LEARNED_ENGINE)  # one line naming the extra
    raise

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import staged_folder
from magicbokeh.model.controlnet import MagicBokehControlNet
from magicbokeh.model.lora import add_unet_sr_lora, add_vae_encoder_lora
from magicbokeh.model.mask_attention import FocusMaskAttnProcessor, install_focus_attention
from magicbokeh.model.unet import MagicBokehUNet

__all__ = ["CONFIG_FILE", "NETWORK_SUBFOLDER", "WEIGHTS_FILE", "MagicBokehNetwork", "jsonable"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
NETWORK_SUBFOLDER = "network"
DOWNLOAD_HINT = "fetch the weights with `magicbokeh download`"


class MagicBokehNetwork(ModelMixin, ConfigMixin):
    """VAE encoder (+LoRA) → injector → pruned UNet (+SR LoRA, focus attention) → VAE decoder.

    Inputs of :meth:`forward`: ``image`` B×3×H×W sRGB in [−1, 1]; ``defocus`` B×1×H×W, the
    K-scaled defocus map |d − d_f|·K/32 mapped to [−1, 1] by 2·m − 1; ``focus_mask`` B×1×H×W,
    true/1 where in focus (or None for no masking). H and W must be multiples of 8.
    """

    config_name = CONFIG_FILE
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any],
        controlnet_config: dict[str, Any],
        vae_config: dict[str, Any],
        scheduler_config: dict[str, Any],
        rank_unet: int = 4,
        rank_vae: int = 4,
        rank_bokeh: int = 8,
        unet_lora_encoder_modules: Sequence[str] = (),
        unet_lora_decoder_modules: Sequence[str] = (),
        vae_lora_encoder_modules: Sequence[str] = (),
        timestep: int = 999,
    ) -> None:
        super().__init__()
        self.unet = MagicBokehUNet(**unet_config)
        add_unet_sr_lora(self.unet, rank_unet, unet_lora_encoder_modules, unet_lora_decoder_modules)
        self.focus_attention_layers = install_focus_attention(self.unet, rank_bokeh)
        self.controlnet = MagicBokehControlNet(**controlnet_config)
        self.vae = AutoencoderKL.from_config(vae_config)
        add_vae_encoder_lora(self.vae, rank_vae, vae_lora_encoder_modules)
        with torch.device("cpu"):
            scheduler = DDPMScheduler.from_config(scheduler_config)
            if scheduler.config.prediction_type != "epsilon":
                raise MagicBokehError("the scheduler must predict epsilon (SD2.1-base settings)")
            alpha_bar = scheduler.alphas_cumprod[timestep].to(torch.float32)
        # ᾱ_t in float32, as the scheduler holds it; kept off the module so dtype casts leave it.
        self._alpha_bar = alpha_bar
        self.scaling_factor = float(self.vae.config.scaling_factor)

    # ----------------------------------------------------------------------------------- steps
    @property
    def latent_scale(self) -> int:
        """Pixels per latent pixel of the VAE (8 for SD2.1-base)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, image: torch.Tensor, latent_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Latent z: B×3×H×W in [−1, 1] → B×4×H/8×W/8, times the scaling factor.

        Without ``latent_noise`` z is the posterior mode (mean); with it (standard normal, the
        latent's shape) z is the posterior sample mean + std·noise, as the released code draws.
        """
        image = image.to(device=self.device, dtype=self.vae.dtype)
        posterior = self.vae.encode(image).latent_dist
        if latent_noise is None:
            return posterior.mode() * self.scaling_factor
        if latent_noise.shape != posterior.mean.shape:
            raise MagicBokehError(
                f"latent noise must be {tuple(posterior.mean.shape)}, "
                f"got {tuple(latent_noise.shape)}"
            )
        noise = latent_noise.to(posterior.mean)
        return (posterior.mean + posterior.std * noise) * self.scaling_factor

    def embed_defocus(self, defocus: torch.Tensor) -> torch.Tensor:
        """Conditioning embedding of the [−1, 1] defocus map: B×1×H×W → B×C0×H/8×W/8."""
        condition = defocus.to(device=self.device, dtype=self.controlnet.dtype)
        return self.controlnet.embed_condition(condition.repeat(1, 3, 1, 1))

    def timestep_tensor(self, batch: int) -> torch.Tensor:
        """The constant timestep as a long B-vector."""
        return torch.full((batch,), self.config.timestep, dtype=torch.long, device=self.device)

    def predict_x0(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (z − √(1−ᾱ)·ε)/√ᾱ, computed in float32 (returns float32)."""
        alpha_bar = self._alpha_bar.to(z.device)
        return (z.float() - (1 - alpha_bar) ** 0.5 * eps.float()) / alpha_bar**0.5

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Decoded image before clamping: B×4×h×w latent → B×3×8h×8w, about [−1, 1]."""
        return self.vae.decode(x0.to(self.vae.dtype) / self.scaling_factor).sample

    def forward(
        self,
        image: torch.Tensor,
        defocus: torch.Tensor,
        focus_mask: torch.Tensor | None,
        return_intermediates: bool = False,
        latent_noise: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, Any]:
        """One step on a batch of tiles; returns B×3×H×W in [−1, 1] (see class docstring).

        With ``return_intermediates`` a dict with ``z``, ``cond_embedding``, ``residuals``
        (list of 12), ``eps``, ``x0``, ``decoded`` (before clamping) and ``image``.
        ``latent_noise`` (B×4×H/8×W/8 standard normal) samples the VAE posterior, see
        :meth:`encode`.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise MagicBokehError(f"image must be B×3×H×W, got {tuple(image.shape)}")
        if image.shape[-2] % 8 or image.shape[-1] % 8:
            raise MagicBokehError(f"tile size {tuple(image.shape[-2:])} must be a multiple of 8")
        if defocus.shape[0] != image.shape[0] or defocus.shape[-2:] != image.shape[-2:]:
            raise MagicBokehError("defocus map must be B×1×H×W with the image's B, H and W")
        z = self.encode(image, latent_noise)
        cond = self.embed_defocus(defocus)
        t = self.timestep_tensor(z.shape[0])
        sample = z.to(self.unet.dtype)
        residuals = self.controlnet(sample, t, cond)
        mask = None if focus_mask is None else focus_mask.to(self.device)
        eps = self.unet(sample, t, down_block_additional_residuals=residuals, focus_mask=mask)
        x0 = self.predict_x0(z, eps)
        decoded = self.decode(x0)
        out = decoded.clamp(-1, 1)
        if not return_intermediates:
            return out
        return {
            "z": z,
            "cond_embedding": cond,
            "residuals": residuals,
            "eps": eps,
            "x0": x0,
            "decoded": decoded,
            "image": out,
        }

    # ----------------------------------------------------------------------------- inference
    def _sr_lora_layers(self) -> list[BaseTunerLayer]:
        return [m for m in self.modules() if isinstance(m, BaseTunerLayer)]

    @property
    def sr_lora_merged(self) -> bool:
        """True after :meth:`merge_sr_lora` (until :meth:`unmerge_sr_lora`)."""
        return any(layer.merged for layer in self._sr_lora_layers())

    def merge_sr_lora(self) -> int:
        """Fold the SR LoRA (UNet and VAE encoder) into the base weights, for inference.

        Equal to the unmerged network within float32 rounding (≤ 3e-5 on the output) and about
        10–20 % faster per tile on a CPU, where the unmerged VAE-encoder LoRA is costly. Merge
        in float32, before casting to bf16/fp16. The bokeh LoRA stays separate: it feeds the
        second attention branch. A merged network is neither saved nor trained: call
        :meth:`unmerge_sr_lora` first. Returns the number of merged layers.
        """
        layers = [layer for layer in self._sr_lora_layers() if not layer.merged]
        with torch.no_grad():
            for layer in layers:
                layer.merge()
        return len(layers)

    def unmerge_sr_lora(self) -> None:
        """Undo :meth:`merge_sr_lora` (base weights come back up to float rounding)."""
        with torch.no_grad():
            for layer in self._sr_lora_layers():
                if layer.merged:
                    layer.unmerge()

    # ------------------------------------------------------------------------------ training
    def train(self, mode: bool = True) -> MagicBokehNetwork:
        """``nn.Module.train``; refused while the SR LoRA is merged (it would get no gradients)."""
        if mode and self.sr_lora_merged:
            raise MagicBokehError("the SR LoRA is merged for inference: call unmerge_sr_lora()")
        return super().train(mode)

    def set_bokeh_lora_trainable(self, trainable: bool) -> None:
        """Switch ``requires_grad`` of the focus-aware attention's bokeh LoRA."""
        for module in self.unet.modules():
            if isinstance(module, FocusMaskAttnProcessor):
                module.set_trainable(trainable)

    # ---------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, save_directory: str | Path, **_: Any) -> Path:  # type: ignore[override]
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` into the folder.

        Both are written into a temporary folder beside it first and moved in when complete
        (:func:`magicbokeh.io.atomic.staged_folder`, merging: other files in the folder are
        kept), so an interrupted save leaves no half-written model.
        """
        if self.sr_lora_merged:
            raise MagicBokehError(
                "the SR LoRA is merged for inference; call unmerge_sr_lora() before saving, or "
                "save a network loaded without merging"
            )
        folder = Path(save_directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = {k: v for k, v in dict(self.config).items() if not k.startswith("_")}
        config["_class_name"] = type(self).__name__
        with staged_folder(folder, merge=True) as staging:
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
            text = json.dumps(jsonable(config), indent=2, sort_keys=True) + "\n"
            (staging / CONFIG_FILE).write_text(text)
        return folder

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        folder: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **_: Any,
    ) -> MagicBokehNetwork:
        """Load a folder written by :meth:`save_pretrained` (or its parent with ``network/``).

        Raises MagicBokehError naming the missing or damaged file and how to fetch it.
        """
        folder = resolve_network_folder(folder)
        config = read_config(folder / CONFIG_FILE)
        state = read_weights(folder / WEIGHTS_FILE)
        return cls.from_config_and_state(config, state, torch_dtype=torch_dtype, device=device)

    @classmethod
    def from_config_and_state(
        cls,
        config: dict[str, Any],
        state: dict[str, torch.Tensor],
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        source: str = "the checkpoint",
    ) -> MagicBokehNetwork:
        """Build the network on the meta device and assign ``state`` (complete, exact keys)."""
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        try:
            with torch.device("meta"):
                net = cls(**kwargs)
        except TypeError as exc:
            raise MagicBokehError(
                f"{source}: config does not describe a MagicBokehNetwork ({exc})"
            ) from None
        expected = net.state_dict()
        check_state_dict(expected, state, source)
        dtype = torch_dtype or torch.float32
        state = {
            k: v.to(dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()
        }
        net.load_state_dict(state, strict=True, assign=True)
        net.eval()
        if device is not None:
            net.to(device)
        return net


def resolve_network_folder(folder: str | Path) -> Path:
    """The folder that holds the network files (``folder`` or ``folder/network``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MagicBokehError(f"model folder {folder} not found; {DOWNLOAD_HINT} or pass its path")
    if not (folder / CONFIG_FILE).is_file() and (folder / NETWORK_SUBFOLDER).is_dir():
        folder = folder / NETWORK_SUBFOLDER
    return folder


def read_config(path: Path) -> dict[str, Any]:
    """Read a JSON config; MagicBokehError when missing or not JSON."""
    if not path.is_file():
        raise MagicBokehError(f"{path} is missing; {DOWNLOAD_HINT}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MagicBokehError(f"{path} is not valid JSON ({exc}); {DOWNLOAD_HINT} again") from None
    if not isinstance(config, dict):
        raise MagicBokehError(f"{path} does not hold a JSON object; {DOWNLOAD_HINT} again")
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file on CPU; MagicBokehError when missing or damaged."""
    if not path.is_file():
        raise MagicBokehError(f"{path} is missing; {DOWNLOAD_HINT}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise MagicBokehError(f"{path} is damaged ({exc}); {DOWNLOAD_HINT} again") from None


def check_state_dict(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str
) -> None:
    """MagicBokehError when ``state`` lacks keys, has unknown keys or shapes differ."""
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing:
        raise MagicBokehError(
            f"{source} is incomplete: {len(missing)} tensors missing "
            f"(e.g. {', '.join(missing[:3])}); {DOWNLOAD_HINT} again"
        )
    if unknown:
        raise MagicBokehError(
            f"{source} has {len(unknown)} unknown tensors (e.g. {', '.join(unknown[:3])}); "
            "it was made for a different network"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise MagicBokehError(
                f"{source}: tensor {key} has shape {tuple(state[key].shape)}, "
                f"the network needs {tuple(ref.shape)}"
            )


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and keys as strings, as JSON stores it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
