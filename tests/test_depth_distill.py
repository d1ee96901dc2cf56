"""Self-distillation pieces: student/teacher, feature taps, losses, one batch, export, pickup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from magicbokeh.depth.convert_depth_anything import (  # noqa: E402
    build_model,
    convert_original_state_dict,
    load_original_state_dict,
)
from magicbokeh.depth.depth_anything import DepthAnythingEstimator  # noqa: E402
from magicbokeh.depth.distill import (  # noqa: E402
    DistillSettings,
    distillation_loss,
    feature_loss,
    forward_with_features,
    load_teacher,
    make_student,
    network_input,
    output_gap,
    parse_feature_layers,
    sample_panels,
    scale_shift_invariant_loss,
    ssi_normalise,
    tapped_layers,
)
from magicbokeh.depth.export import (  # noqa: E402
    export_depth_model,
    install_depth_model,
    save_original,
)
from magicbokeh.errors import MagicBokehError  # noqa: E402
from tiny_depth import tiny_model, vector_config, vectors  # noqa: E402

CROP = 56  # 4×4 patches of 14 px


@pytest.fixture
def teacher():
    return tiny_model().requires_grad_(False).eval()


def crops(count: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth random sRGB crops ``count×3×56×56`` with some structure for depth to vary."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 7, 7, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(CROP, CROP), mode="bicubic").clamp(0, 1)


# --- teacher and student ------------------------------------------------------------------------


def test_feature_layers_default_to_the_heads_taps(teacher) -> None:
    assert tapped_layers(teacher) == (0, 1, 2, 3)
    assert parse_feature_layers("auto", teacher) == (0, 1, 2, 3)
    assert parse_feature_layers("1,3", teacher) == (1, 3)
    for bad in ("1,1", "0,4", "-1", "a,b", ""):
        with pytest.raises(MagicBokehError, match="feature-layers"):
            parse_feature_layers(bad, teacher)


def test_vector_model_taps_blocks_2_5_8_11() -> None:
    folder = vectors()
    model = build_model(load_original_state_dict(folder / "original.pth"), vector_config(folder))
    assert tapped_layers(model) == (2, 5, 8, 11)


def test_student_is_an_identical_trainable_copy(teacher) -> None:
    student = make_student(teacher)
    assert student is not teacher and student.training and not teacher.training
    images = network_input(crops(), teacher)
    torch.testing.assert_close(
        student(pixel_values=images).predicted_depth,
        teacher(pixel_values=images).predicted_depth,
        rtol=0,
        atol=0,
    )
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    encoder_only = make_student(teacher, freeze_head=True)
    assert all(p.requires_grad for p in encoder_only.backbone.parameters())
    assert not any(p.requires_grad for p in encoder_only.neck.parameters())
    assert not any(p.requires_grad for p in encoder_only.head.parameters())
    head_only = make_student(teacher, freeze_encoder=True)
    assert not any(p.requires_grad for p in head_only.backbone.parameters())
    assert all(p.requires_grad for p in head_only.head.parameters())
    with pytest.raises(MagicBokehError, match="nothing to train"):
        make_student(teacher, freeze_encoder=True, freeze_head=True)


def test_load_teacher_freezes_a_saved_model(tmp_path: Path) -> None:
    tiny_model().save_pretrained(tmp_path / "da")
    loaded = load_teacher(tmp_path / "da")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_features_are_what_the_head_receives(teacher) -> None:
    pixel_values = network_input(crops(), teacher)
    disparity, features = forward_with_features(teacher, pixel_values, tapped_layers(teacher))
    maps = teacher.backbone(pixel_values).feature_maps  # layer-normed, with the class token
    assert len(features) == 4
    for feature, tapped in zip(features, maps, strict=True):
        assert feature.shape == (2, 16, 32)  # 4×4 patch tokens, no class token
        torch.testing.assert_close(feature, tapped[:, 1:])
    torch.testing.assert_close(disparity, teacher(pixel_values=pixel_values).predicted_depth)


def test_crops_must_be_square_multiples_of_the_patch(teacher) -> None:
    with pytest.raises(MagicBokehError, match="--resolution 56"):
        network_input(torch.rand(1, 3, 60, 60), teacher)
    with pytest.raises(MagicBokehError, match="square"):
        network_input(torch.rand(1, 3, 56, 70), teacher)


# --- losses -------------------------------------------------------------------------------------


def test_scale_shift_invariant_loss_by_hand() -> None:
    x = torch.tensor([[0.0, 1.0, 5.0]])  # median 1, mean |x − 1| = 5/3 → −0.6, 0, 2.4
    y = torch.tensor([[0.0, 1.0, 2.0]])  # median 1, mean |y − 1| = 2/3 → −1.5, 0, 1.5
    torch.testing.assert_close(ssi_normalise(x), torch.tensor([[-0.6, 0.0, 2.4]]))
    assert float(scale_shift_invariant_loss(x, y)) == pytest.approx(0.6)
    d = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(scale_shift_invariant_loss(3.5 * d + 2.0, d)) == pytest.approx(0.0, abs=1e-6)
    assert float(scale_shift_invariant_loss(torch.ones(1, 4, 4), torch.ones(1, 4, 4))) == 0.0


def test_feature_loss_is_the_mean_of_per_layer_mse() -> None:
    a = [torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)]
    b = [torch.full((1, 4, 2), 1.0), torch.full((1, 4, 2), 3.0)]
    assert float(feature_loss(a, b)) == pytest.approx((1.0 + 9.0) / 2)


def test_one_batch_is_seeded_and_trains_only_the_student(teacher) -> None:
    student = make_student(teacher, freeze_head=True)
    settings = DistillSettings(feature_layers=tapped_layers(teacher))
    clean = crops()

    def batch():
        return distillation_loss(
            teacher,
            student,
            clean,
            generator=torch.Generator().manual_seed(7),
            settings=settings,
        )

    losses, again = batch(), batch()
    assert losses.lq.shape == clean.shape and not torch.equal(losses.lq, clean)
    assert torch.equal(losses.lq, again.lq)
    assert float(losses.total.detach()) == float(again.total.detach())
    assert float(losses.feature) > 0 and float(losses.output) > 0
    total = float(losses.total.detach())
    assert total == pytest.approx(float(losses.feature) + float(losses.output))
    losses.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
    weighted = distillation_loss(
        teacher,
        student,
        clean,
        generator=torch.Generator().manual_seed(7),
        settings=DistillSettings(tapped_layers(teacher), feature_weight=0.0, output_weight=2.0),
    )
    assert float(weighted.total.detach()) == pytest.approx(2 * float(losses.output), rel=1e-5)


def test_training_output_loss_is_the_evaluation_gap(teacher) -> None:
    """The training term and the reported gap are one number: same preprocessing of both inputs,
    no train/eval-mode difference in the student."""
    student = make_student(teacher)
    torch.manual_seed(0)
    with torch.no_grad():  # move the student off the teacher so the gap is not zero
        for parameter in student.head.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    settings = DistillSettings(feature_layers=tapped_layers(teacher))
    clean = crops(2, seed=4)
    losses = distillation_loss(
        teacher, student, clean, generator=torch.Generator().manual_seed(5), settings=settings
    )
    assert student.training
    gap = output_gap(student.eval(), teacher, losses.lq, clean)
    assert float(gap) > 0
    assert torch.allclose(losses.output, gap, rtol=1e-5, atol=1e-7)


def test_a_few_steps_bring_the_student_closer_to_the_clean_teacher(teacher) -> None:
    student = make_student(teacher)
    settings = DistillSettings(feature_layers=tapped_layers(teacher))
    clean = crops(2, seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    for _ in range(8):  # the same degraded batch each step
        losses = distillation_loss(
            teacher, student, clean, generator=torch.Generator().manual_seed(3), settings=settings
        )
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    before = float(output_gap(teacher, teacher, losses.lq, clean))
    after = float(output_gap(student, teacher, losses.lq, clean))
    assert after < 0.85 * before
    panels = sample_panels(teacher, student, clean, losses.lq)
    assert set(panels) == {"lq", "teacher_hq", "teacher_lq", "student_lq"}
    assert panels["student_lq"].shape == (2, 1, CROP, CROP)
    assert float(panels["teacher_hq"].min()) == 0.0 and float(panels["teacher_hq"].max()) > 0.99


# --- export and pickup --------------------------------------------------------------------------


def test_original_export_reproduces_the_released_layout(tmp_path: Path) -> None:
    folder = vectors()
    source = torch.load(folder / "original.pth", map_location="cpu", weights_only=True)
    model = build_model(load_original_state_dict(folder / "original.pth"), vector_config(folder))
    out = save_original(make_student(model), tmp_path / "DAdepth.pth")
    written = torch.load(out, map_location="cpu", weights_only=True)
    assert list(written) == ["model"]
    assert set(written["model"]) == set(source["model"])  # same "module."-prefixed names
    assert all(torch.equal(written["model"][k], source["model"][k]) for k in source["model"])
    # Round trip through the converter gives back the exported weights.
    converted = convert_original_state_dict(load_original_state_dict(out), vector_config(folder))
    state = model.state_dict()
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)
    with pytest.raises(MagicBokehError, match="exists"):
        save_original(model, out)
    with pytest.raises(MagicBokehError, match=".pth suffix"):
        save_original(model, tmp_path / "DAdepth.bin")


def test_trained_student_round_trips_through_both_formats(teacher, tmp_path: Path) -> None:
    student = make_student(teacher)
    with torch.no_grad():
        student.head.conv3.bias.add_(0.5)
        student.backbone.encoder.layer[1].mlp.fc1.weight.mul_(1.1)
    images = crops()
    expected = DepthAnythingEstimator(student, input_size=CROP)(images)
    folder = export_depth_model(student, tmp_path / "student", format="transformers")
    reloaded = DepthAnythingEstimator.from_pretrained(folder, device="cpu", input_size=CROP)
    torch.testing.assert_close(reloaded(images), expected)
    pth = export_depth_model(student, tmp_path / "student.pth", format="original")
    rebuilt = build_model(load_original_state_dict(pth), teacher.config)
    torch.testing.assert_close(DepthAnythingEstimator(rebuilt, input_size=CROP)(images), expected)
    with pytest.raises(MagicBokehError, match="unknown export format"):
        export_depth_model(student, tmp_path / "x", format="onnx")
    with pytest.raises(MagicBokehError, match="already exists"):
        export_depth_model(student, folder, format="transformers")


def test_installed_student_is_found_by_depth_auto_first(
    teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from magicbokeh.depth.resolve import resolve_depth

    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path))
    export_depth_model(teacher, tmp_path / "depth-anything-v2")  # the plain model, installed
    student = make_student(teacher)
    with torch.no_grad():
        student.head.conv3.bias.add_(1.0)
        student.backbone.encoder.layer[0].mlp.fc2.weight.mul_(1.5)
    rgb = np.random.default_rng(0).uniform(size=(40, 56, 3)).astype(np.float32)
    assert resolve_depth("auto", rgb).source == "model:depth-anything-v2"
    folder = install_depth_model(student)
    assert folder == tmp_path / "magicbokeh" / "depth"
    resolved = resolve_depth("auto", rgb)
    assert resolved.source == "model:magicbokeh/depth"
    expected = DepthAnythingEstimator(student)(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    np.testing.assert_allclose(resolved.disparity, expected[0, 0].numpy(), atol=1e-6)
