"""The run machinery on a toy task: folders, checkpoints, resume, phases, stops, settings."""

from __future__ import annotations

import argparse
import errno
import json
import signal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from safetensors.torch import load_file  # noqa: E402

from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.train import trainer as trainer_module  # noqa: E402
from magicbokeh.train.logs import read_metrics  # noqa: E402
from magicbokeh.train.options import (  # noqa: E402
    add_run_options,
    finish_parser,
    resolve_settings,
)
from magicbokeh.train.run_folder import RunFolder  # noqa: E402
from magicbokeh.train.schedule import PhaseCycle, parse_cycle  # noqa: E402
from magicbokeh.train.streams import BatchStream  # noqa: E402
from magicbokeh.train.trainer import Trainer  # noqa: E402
from train_toy import Pairs, ToyTask, toy_settings  # noqa: E402


def train(output, task_kwargs=None, resume=False, on_step_end=None, defaults=None, **overrides):
    settings = toy_settings(output, **overrides)
    task = ToyTask(settings, **(task_kwargs or {}))
    return Trainer(
        task, settings, resume=resume, on_step_end=on_step_end, setting_defaults=defaults
    ).run()


def weights(run, step=None):
    _, folder = RunFolder(run).checkpoint(step)
    return load_file(str(folder / "trainable.safetensors"))


def assert_same(first: dict, second: dict) -> None:
    assert sorted(first) == sorted(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------------------------- schedule
def test_cycle_phases_and_counts():
    cycle = parse_cycle("bokeh:2,sr:3", ("bokeh", "sr"))
    assert [cycle.phase_at(s) for s in range(1, 12)] == ["bokeh"] * 2 + ["sr"] * 3 + [
        "bokeh"
    ] * 2 + ["sr"] * 3 + ["bokeh"]
    assert cycle.steps_in("bokeh", 11) == 5 and cycle.steps_in("sr", 11) == 6
    assert cycle.describe() == "bokeh:2,sr:3"
    for text in ("bokeh:2,depth:1", "bokeh", "bokeh:x", "bokeh:0"):
        with pytest.raises(MagicBokehError):
            parse_cycle(text, ("bokeh", "sr"))
    assert PhaseCycle((("sr", 1),)).phase_at(99) == "sr"


# -------------------------------------------------------------------------------- streams
def take(stream, count):
    return [stream.next()["index"].tolist() for _ in range(count)]


def test_stream_resumes_at_its_position_and_shards_disjointly():
    data = Pairs(10)
    whole = take(BatchStream(data, batch_size=3, seed=5, key="d"), 7)
    first = BatchStream(data, batch_size=3, seed=5, key="d")
    head = take(first, 3)
    tail = take(BatchStream(data, batch_size=3, seed=5, key="d", position=first.position), 4)
    assert head + tail == whole
    # Every epoch is a permutation; epochs differ in order.
    flat = [i for batch in whole for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]
    assert data.epochs_seen >= {0, 1, 2}
    # Two processes take disjoint halves of each global batch of 2×3 items.
    ranks = [BatchStream(data, batch_size=3, seed=5, key="d", rank=r, world=2) for r in (0, 1)]
    global_batches = take(BatchStream(data, batch_size=6, seed=5, key="d"), 3)
    for step in range(3):
        zero, one = ranks[0].next()["index"].tolist(), ranks[1].next()["index"].tolist()
        assert zero + one == global_batches[step]


def test_stream_items_do_not_depend_on_workers():
    data = Pairs(10)
    plain = take(BatchStream(data, batch_size=4, seed=1, key="d"), 4)
    loaded = BatchStream(data, batch_size=4, seed=1, key="d", num_workers=2)
    assert take(loaded, 4) == plain
    loaded.close()


# ------------------------------------------------------------------------------- settings
def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--data", nargs="+", type=__import__("pathlib").Path)
    add_run_options(p, steps=10, batch_size=4)
    finish_parser(p)
    return p


def test_settings_from_defaults_config_file_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("batch-size: 8\nmixed_precision: bf16\ndata: [a, b]\nweight_decay: 1e-3\n")
    args = parser().parse_args(["-o", "RUN", "--config", str(config), "--steps", "7"])
    settings, given = resolve_settings(args)
    assert settings["batch_size"] == 8 and settings["mixed_precision"] == "bf16"
    assert settings["steps"] == 7 and settings["seed"] == 0
    assert settings["weight_decay"] == 1e-3
    assert [p.rsplit("/", 1)[1] for p in settings["data"]] == ["a", "b"]
    assert all(p.startswith("/") for p in settings["data"])
    assert given == {"batch_size", "mixed_precision", "data", "weight_decay", "steps", "output"}
    assert settings["output"].endswith("RUN") and settings["output"].startswith("/")
    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"seed": 3}))
    stored = {"seed": 9, "batch_size": 2}
    args = parser().parse_args(["-o", "RUN", "--config", str(json_config)])
    settings, _ = resolve_settings(args, stored)
    assert settings["seed"] == 3 and settings["batch_size"] == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr_typo: 1\n", "unknown settings lr_typo"),
        ("mixed-precision: fp8\n", "must be one of"),
        ("gradient_checkpointing: 3\n", "true or false"),
        ("steps: [1, 2]\n", "one value"),
        ("- a\n", "mapping"),
        ("steps: [\n", "not valid"),
    ],
)
def test_bad_config_files_are_refused(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(MagicBokehError, match=message):
        resolve_settings(parser().parse_args(["--config", str(config)]))


# ---------------------------------------------------------------------- runs and resume
def test_run_folder_layout_metrics_and_config(tmp_path):
    result = train(tmp_path / "run", steps=5, sample_every=2, validate=True, val_every=2)
    run = RunFolder(tmp_path / "run")
    assert result.step == 5 and not result.interrupted
    assert run.checkpoint_steps() == [2, 4, 5]
    config = json.loads(run.config_path.read_text())
    assert config["task"] == "toy" and config["settings"]["steps"] == 5
    assert {"torch", "accelerate", "magicbokeh"} <= set(config["versions"])
    assert config["seeds"] == {"seed": 0}
    records = read_metrics(run.metrics_path)
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in train_records] == ["a", "a", "b", "a", "a"]
    for record in train_records:
        assert {"loss", "l2", "lr", "grad_norm", "samples_per_s", "step_s"} <= set(record)
    assert [r["step"] for r in records if r["split"] == "val"] == [0, 2, 4]
    assert sorted(p.name for p in run.samples_dir.iterdir()) == ["step-2.png", "step-4.png"]
    assert any(run.tensorboard_dir.iterdir())
    state = json.loads((run.checkpoint_dir(5) / "state.json").read_text())
    assert state["step"] == 5 and state["phase"] == "a" and state["streams"] == {"data": 20}


def test_keep_last_checkpoints(tmp_path):
    train(tmp_path / "run", steps=9, checkpoint_every=1, keep_checkpoints=3)
    assert RunFolder(tmp_path / "run").checkpoint_steps() == [7, 8, 9]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_gives_the_same_weights_as_one_go(tmp_path, accumulation):
    kw = {"gradient_accumulation_steps": accumulation, "checkpoint_every": 3}
    train(tmp_path / "whole", steps=7, **kw)
    train(tmp_path / "split", steps=4, **kw)
    train(tmp_path / "split", steps=7, resume=True, **kw)
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "split"))
    whole = read_metrics(RunFolder(tmp_path / "whole").metrics_path)
    split = read_metrics(RunFolder(tmp_path / "split").metrics_path)
    assert [r["loss"] for r in whole] == [r["loss"] for r in split]
    config = json.loads(RunFolder(tmp_path / "split").config_path.read_text())
    assert config["settings"]["steps"] == 7 and len(config["sessions"]) == 1


def test_phases_train_only_their_parameters_with_their_own_optimizer(tmp_path):
    train(tmp_path / "run", steps=3, checkpoint_every=1, weight_decay=0.1)
    after = [weights(tmp_path / "run", s) for s in (1, 2, 3)]
    init = load_file(str(RunFolder(tmp_path / "run").init_dir / "toy.safetensors"))
    for step, (before, now) in enumerate(zip([init, *after[:2]], after, strict=True), 1):
        phase = "a" if step < 3 else "b"
        for key in now:
            moved = not torch.equal(before[key], now[key])
            assert moved == key.startswith(phase), (step, key)
    optimizers = torch.load(
        RunFolder(tmp_path / "run").checkpoint_dir(3) / "optimizers.pt", weights_only=True
    )["optimizers"]
    assert optimizers["a"]["state"][0]["step"] == 2 and optimizers["b"]["state"][0]["step"] == 1


def test_ctrl_c_writes_a_checkpoint_and_stops_cleanly(tmp_path):
    def interrupt(step):
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's
    result = train(tmp_path / "run", steps=10, checkpoint_every=100, on_step_end=interrupt)
    assert result.interrupted and result.step == 3
    assert RunFolder(tmp_path / "run").checkpoint_steps() == [3]
    assert signal.getsignal(signal.SIGINT) is handler  # put back as it was
    train(tmp_path / "run", steps=10, checkpoint_every=100, resume=True)
    train(tmp_path / "whole", steps=10, checkpoint_every=100)
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "run"))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(MagicBokehError, match=r"loss is nan at step 5 \(phase a\).*step-4"):
        train(tmp_path / "run", steps=8, task_kwargs={"fail_at_call": 5})
    run = RunFolder(tmp_path / "run")
    assert run.checkpoint_steps() == [2, 4]
    assert max(r["step"] for r in read_metrics(run.metrics_path)) == 4
    # The run continues from the last good checkpoint.
    assert train(tmp_path / "run", steps=8, resume=True).step == 8


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    train(tmp_path / "run", steps=2)
    good = weights(tmp_path / "run", 2)

    def full(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "save_file", full)
        with pytest.raises(MagicBokehError, match="step-4.*disk is full.*step-2 is intact"):
            train(tmp_path / "run", steps=4, resume=True)
    run = RunFolder(tmp_path / "run")
    assert run.checkpoint_steps() == [2]
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.startswith(".")]
    assert_same(good, weights(tmp_path / "run", 2))
    assert train(tmp_path / "run", steps=4, resume=True).step == 4


# ---------------------------------------------------------------------------- refusals
def test_new_run_refuses_a_used_folder(tmp_path):
    train(tmp_path / "run", steps=2)
    with pytest.raises(MagicBokehError, match="already holds a `train toy` run.*--resume"):
        train(tmp_path / "run", steps=2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MagicBokehError, match="not empty and holds no training run"):
        train(tmp_path / "other", steps=2)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_resume_refuses_empty_foreign_and_different_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MagicBokehError, match="holds no run to resume"):
        train(tmp_path / "empty", resume=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.png").write_bytes(b"")
    with pytest.raises(MagicBokehError, match="is not a training run"):
        train(tmp_path / "foreign", resume=True)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(MagicBokehError, match="not the config of a magicbokeh training run"):
        train(tmp_path / "fake", resume=True)
    train(tmp_path / "run", steps=2)
    with pytest.raises(MagicBokehError, match=r"other settings: adam_beta1 \(run: 0.9, now: 0.5\)"):
        train(tmp_path / "run", steps=4, resume=True, adam_beta1=0.5)
    # Changeable settings (more steps, other logging) are accepted.
    assert train(tmp_path / "run", steps=3, resume=True, log_every=5).step == 3


def test_a_setting_newer_than_the_run_resumes_at_its_default(tmp_path):
    train(tmp_path / "run", steps=2)
    config_path = RunFolder(tmp_path / "run").config_path
    config = json.loads(config_path.read_text())
    del config["settings"]["adam_beta1"]  # as if the setting came in a later version
    config_path.write_text(json.dumps(config))
    with pytest.raises(MagicBokehError, match=r"adam_beta1 \(run: '<unset>', now: 0.5\)"):
        train(tmp_path / "run", steps=3, resume=True, adam_beta1=0.5, defaults={"adam_beta1": 0.9})
    assert train(tmp_path / "run", steps=3, resume=True, defaults={"adam_beta1": 0.9}).step == 3


def test_two_processes_share_each_global_batch_and_only_the_main_one_writes(tmp_path):
    import os
    import shutil
    import socket
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    script = Path(__file__).with_name("train_toy.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parent)}
    command = [str(torchrun if torchrun.is_file() else "torchrun"), "--nproc_per_node", "2"]
    with socket.socket() as probe:  # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    command += [str(script), str(tmp_path / "ddp"), "ddp"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    train(tmp_path / "single", batch_size=4, noise=0.0, steps=4)
    two, one = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    run = RunFolder(tmp_path / "ddp")
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2, 3, 4]
    state = json.loads((run.checkpoint_dir(4) / "state.json").read_text())
    assert state["processes"] == 2 and state["streams"] == {"data": 16}


@pytest.mark.parametrize("task", ["sr", "bokeh"])
def test_example_config_files_hold_valid_settings(task):
    from pathlib import Path

    from magicbokeh import cli

    example = Path(__file__).resolve().parents[1] / "examples" / "training" / f"train_{task}.yaml"
    args = cli.build_parser("train").parse_args(["train", task, "--config", str(example)])
    settings, given = resolve_settings(args)
    assert settings["resolution"] == 512 and settings["mixed_precision"] == "bf16"
    assert "output" in given and settings["lpips_weight"] == 2.0


def test_a_run_that_crashed_before_its_first_checkpoint_restarts_on_resume(tmp_path):
    def crash(step):
        if step == 3:
            raise RuntimeError("power cut")

    kw = {"steps": 5, "checkpoint_every": 100, "validate": True, "val_every": 100}
    with pytest.raises(RuntimeError, match="power cut"):
        train(tmp_path / "run", on_step_end=crash, **kw)
    assert RunFolder(tmp_path / "run").checkpoint_steps() == []
    assert train(tmp_path / "run", resume=True, **kw).step == 5
    train(tmp_path / "whole", **kw)
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "run"))
    records = read_metrics(RunFolder(tmp_path / "run").metrics_path)
    assert [(r["step"], r["split"]) for r in records] == [(0, "val")] + [
        (s, "train") for s in range(1, 6)
    ]


def test_train_and_export_help_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from magicbokeh import cli\n"
        "for name in ('train', 'export'):\n"
        "    cli.build_parser(name)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_ctrl_c_from_the_terminal_with_loader_processes(tmp_path):
    """SIGINT to the whole process group (what a terminal sends), loader workers included."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("train_toy.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parent)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run"), "interrupt"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        for line in process.stdout:
            if line.strip() == "step 3":
                os.killpg(process.pid, signal.SIGINT)
                break
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    stderr = process.stderr.read()
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped at step" in stderr
    steps = RunFolder(tmp_path / "run").checkpoint_steps()
    assert len(steps) == 1 and 3 <= steps[0] < 500
