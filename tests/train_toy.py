"""A toy training task for the run machinery's tests: two linear layers, two phases.

Phase ``a`` trains layer ``a`` on stream ``data``, phase ``b`` trains layer ``b`` on the same
stream; the loss adds generator-drawn noise, so a wrong generator seed shows up in the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from magicbokeh.train.options import add_run_options, finish_parser, resolve_settings
from magicbokeh.train.schedule import PhaseCycle, parse_cycle
from magicbokeh.train.task import (
    ParamGroup,
    Phase,
    StepOutput,
    StreamSpec,
    TrainingTask,
    ValidationSet,
)


class Pairs(Dataset):
    """``count`` fixed (x, y) pairs, y a fixed linear function of x."""

    def __init__(self, count: int = 24, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(count, 4, generator=gen)
        self.y = self.x @ torch.randn(4, 2, generator=gen)
        self.epochs_seen: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.add(epoch)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "y": self.y[index], "index": index}


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class ToyTask(TrainingTask):
    name = "toy"

    def __init__(self, settings, fail_at_call: int | None = None) -> None:
        super().__init__(settings)
        self.calls = 0
        self.fail_at_call = fail_at_call
        self.data = Pairs()

    def write_init(self, folder: Path) -> None:
        torch.manual_seed(123)
        folder.mkdir(parents=True)
        save_file(Toy().state_dict(), str(folder / "toy.safetensors"))

    def load_model(self, folder: Path) -> nn.Module:
        model = Toy()
        model.load_state_dict(load_file(str(folder / "toy.safetensors")))
        return model

    def phase_names(self):
        return ("a", "b")

    def cycle(self) -> PhaseCycle:
        return parse_cycle(self.settings.get("cycle", "a:2,b:1"), ("a", "b"))

    def phases(self, model):
        lr = self.settings.get("lr", 0.05)
        return {
            "a": Phase(
                "a", {"a": ParamGroup(list(model.a.named_parameters(prefix="a")), lr)}, ("data",)
            ),
            "b": Phase(
                "b", {"b": ParamGroup(list(model.b.named_parameters(prefix="b")), lr)}, ("data",)
            ),
        }

    def streams(self):
        return {"data": StreamSpec(self.data, int(self.settings["batch_size"]))}

    def validation_sets(self):
        return (
            {"held": ValidationSet(Pairs(8, seed=1), "a", "data")}
            if self.settings.get("validate")
            else {}
        )

    def step(self, model, phase, batches, *, device, generator, images):
        self.calls += 1
        batch = batches["data"]
        x = batch["x"].to(device)
        scale = self.settings.get("noise", 0.01)
        noise = scale * torch.randn(x.shape, generator=generator, device=device)
        out = model(x + noise)
        loss = (out - batch["y"].to(device)).square().mean()
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            loss = loss * float("nan")
        result = StepOutput(loss=loss, terms={"l2": loss.detach()})
        if images:
            img = torch.sigmoid(out.detach())[:, :1, None, None].expand(-1, 3, 8, 8)
            result.images = {"input": img, "output": img, "target": img}
        return result


def toy_settings(output, **overrides) -> dict:
    """Every run setting with the flag defaults, for ``output``, plus ``overrides``."""
    import argparse

    parser = argparse.ArgumentParser()
    add_run_options(parser, steps=6, batch_size=4)
    finish_parser(parser)
    settings, _ = resolve_settings(parser.parse_args(["-o", str(output)]))
    settings.update(device="cpu", num_workers=0, quiet=True, checkpoint_every=2, log_every=1)
    settings.update(sample_every=0, val_every=0)
    settings.update(overrides)
    return settings


if __name__ == "__main__":  # run by the multi-process and the Ctrl-C tests
    import sys
    import time

    from magicbokeh.train.trainer import Trainer

    if sys.argv[2] == "ddp":
        settings = toy_settings(sys.argv[1], batch_size=2, noise=0.0, steps=4)
        Trainer(ToyTask(settings), settings).run()
    else:  # slow steps with data-loading processes, reporting each step

        def report(step: int) -> None:
            print(f"step {step}", flush=True)
            time.sleep(0.2)

        settings = toy_settings(sys.argv[1], steps=500, num_workers=2, checkpoint_every=1000)
        result = Trainer(ToyTask(settings), settings, on_step_end=report).run()
        sys.exit(130 if result.interrupted else 0)
