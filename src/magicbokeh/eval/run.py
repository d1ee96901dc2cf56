"""One evaluation run: batched, with progress, resumable; writes the report folder.

``REPORT_DIR`` when the run has finished::

    report.json     per-image values, means, settings, versions, timings
    report.md       the table in the papers' column order, with the protocol above it
    gallery.html    input | output | target per image, with zoomed crops (open it offline)
    gallery/        the gallery's pictures
    outputs/        <stem>.png, each output as scored (only with --save-outputs)

While it runs, ``REPORT_DIR/.eval-run/`` holds the settings, one JSON line per finished image,
the outputs and the gallery pictures made so far. Running the same command again continues
where it stopped (finished images are not recomputed); other settings are refused unless
``--overwrite``, which starts again. The final files are written atomically, and the work
folder is removed at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from magicbokeh.errors import MagicBokehError
from magicbokeh.eval import gallery, report
from magicbokeh.eval.engines import Item, Result
from magicbokeh.eval.layouts import Pair, PairSet
from magicbokeh.eval.scoring import METRICS, Scorer
from magicbokeh.io.images import save_image

__all__ = ["STATE_DIR", "Evaluation", "run_evaluation"]

STATE_DIR = ".eval-run"
_SETTINGS, _RECORDS = "settings.json", "records.jsonl"


@dataclass
class Evaluation:
    """Everything a run needs.

    ``settings``: what makes results comparable (compared on resume, stored in the report);
    ``prepare``: a pair → the engine's :class:`Item`; ``engine``: has ``run(items)`` and
    ``stages``; ``make_scorer``: builds the metrics (called once the report folder is checked).
    """

    protocol: str
    pairs: PairSet
    settings: dict
    prepare: Callable[[Pair], Item]
    engine: object
    make_scorer: Callable[[], Scorer]
    batch_size: int = 4
    scorer: Scorer | None = None


def _first_difference(old: dict, new: dict) -> str | None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} then, {new.get(key)!r} now"
    return None


def _prepare_folder(report_dir: Path, settings: dict, overwrite: bool) -> dict[str, dict]:
    """Check ``report_dir``; returns the records of an interrupted run with equal settings."""
    if report_dir.exists() and not report_dir.is_dir():
        raise MagicBokehError(f"-o {report_dir} is a file; give a folder for the report")
    state = report_dir / STATE_DIR
    if overwrite:
        for name in (*report.REPORT_FILES, gallery.GALLERY_DIR, "outputs", STATE_DIR):
            path = report_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return {}
    finished = [n for n in report.REPORT_FILES if (report_dir / n).exists()]
    if finished:
        raise MagicBokehError(
            f"{report_dir} already holds a report ({finished[0]}); pass --overwrite to replace it "
            "or choose another -o"
        )
    if (report_dir / "outputs").exists():
        raise MagicBokehError(
            f"{report_dir / 'outputs'} exists; pass --overwrite to replace it or choose another -o"
        )
    if not (state / _SETTINGS).is_file():
        return {}
    old = json.loads((state / _SETTINGS).read_text(encoding="utf-8"))
    difference = _first_difference(old, report.plain_json(settings))
    if difference:
        raise MagicBokehError(
            f"{report_dir} holds an unfinished run with other settings ({difference}); run the "
            "same command to continue it, or pass --overwrite to start again"
        )
    return _read_records(state / _RECORDS)


def _read_records(path: Path) -> dict[str, dict]:
    """The finished images' records (a line cut short by an interruption is ignored)."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["stem"]] = record
    return records


def _append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(report.plain_json(record), allow_nan=False) + "\n")
        handle.flush()


def quantize(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` on 8-bit levels (as :func:`~magicbokeh.io.save_image` writes it), float32."""
    return (np.rint(np.clip(rgb, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)


def _score(scorer: Scorer, outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> list:
    """Per-image metric values, scoring same-size images together."""
    values: list[dict] = [{} for _ in outputs]
    groups: dict[tuple, list[int]] = {}
    for i, out in enumerate(outputs):
        groups.setdefault(out.shape, []).append(i)
    for indices in groups.values():
        batch = torch.stack([_tensor(outputs[i]) for i in indices])
        goal = torch.stack([_tensor(targets[i]) for i in indices])
        for i, scores in zip(indices, scorer.score(batch, goal), strict=True):
            values[i] = scores
    return values


def _note_unavailable(scorer: Scorer, quiet: bool) -> None:
    """Say once per reason which metrics cannot be computed (with what went wrong)."""
    if scorer.unavailable and not quiet:
        by_reason: dict[str, list[str]] = {}
        for name, reason in scorer.unavailable.items():
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            details = "; ".join(scorer.details[n] for n in names if n in scorer.details)
            print(
                f"note: {', '.join(names)} not available: {reason} (the report marks the column)"
                + (f" [{details}]" if details else ""),
                file=sys.stderr,
            )


def run_evaluation(
    evaluation: Evaluation,
    report_dir: str | Path,
    *,
    overwrite: bool = False,
    save_outputs: bool = False,
    quiet: bool = False,
) -> dict:
    """Run ``evaluation`` into ``report_dir`` (see the module doc); returns the report dict.

    Raises:
        MagicBokehError: the folder holds a finished report or a different run (without
            ``overwrite``), or an image cannot be read or does not fit its target.
    """
    report_dir = Path(report_dir).expanduser()
    settings = evaluation.settings
    done = _prepare_folder(report_dir, settings, overwrite)
    scorer = evaluation.scorer = evaluation.make_scorer()
    _note_unavailable(scorer, quiet)
    per_image = [n for n in scorer.computed if METRICS[n].kind != "set"]
    # images scored before a metric became available (e.g. pyiqa installed since) are redone
    done = {stem: r for stem, r in done.items() if all(n in r for n in per_image)}
    state = report_dir / STATE_DIR
    (state / "outputs").mkdir(parents=True, exist_ok=True)
    report.write_json(state / _SETTINGS, settings)
    needs_targets = any(METRICS[n].kind == "set" for n in scorer.computed)
    todo = [p for p in evaluation.pairs.pairs if p.stem not in done]
    if done and not quiet:
        print(
            f"resuming: {len(done)} of {len(evaluation.pairs.pairs)} images done", file=sys.stderr
        )
    with tqdm(
        total=len(todo), desc=f"eval {evaluation.protocol}", unit="img", disable=quiet
    ) as bar:
        for start in range(0, len(todo), evaluation.batch_size):
            chunk = todo[start : start + evaluation.batch_size]
            items = [evaluation.prepare(p) for p in chunk]
            results = evaluation.engine.run(items)
            for record in _finish_chunk(evaluation, chunk, items, results, state, needs_targets):
                done[record["stem"]] = record
                _append_record(state / _RECORDS, record)
            bar.update(len(chunk))
    for warning in sorted(getattr(evaluation.engine, "warnings", ())):
        if not quiet:
            print(f"warning: {warning}", file=sys.stderr)
    records = [done[p.stem] for p in evaluation.pairs.pairs]
    set_values = {}
    if needs_targets:
        for pair in evaluation.pairs.pairs:  # targets of images scored without a set metric
            if not (state / "targets" / f"{pair.stem}.png").is_file():
                target = quantize(evaluation.prepare(pair).target)
                save_image(state / "targets" / f"{pair.stem}.png", target, overwrite=True)
        set_values = scorer.score_sets(state / "outputs", state / "targets")
    result = report.build(evaluation, records, set_values)
    gallery.finish(report_dir, state, result)
    report.write(report_dir, result)
    if save_outputs:
        (state / "outputs").rename(report_dir / "outputs")
    shutil.rmtree(state)
    return result


def _finish_chunk(
    evaluation: Evaluation,
    pairs: Sequence[Pair],
    items: Sequence[Item],
    results: Sequence[Result],
    state: Path,
    needs_targets: bool,
) -> list[dict]:
    outputs, targets = [], []
    for pair, item, result in zip(pairs, items, results, strict=True):
        output = quantize(result.output)
        if output.shape != item.target.shape:
            raise MagicBokehError(
                f"pair {pair.stem}: the output is {output.shape[1]}×{output.shape[0]} but the "
                f"target is {item.target.shape[1]}×{item.target.shape[0]}; pass --resize-target "
                "to resize targets to the output size"
            )
        outputs.append(output)
        targets.append(quantize(item.target))
    values = _score(evaluation.scorer, outputs, targets)
    records = []
    for pair, item, result, output, target, scores in zip(
        pairs, items, results, outputs, targets, values, strict=True
    ):
        save_image(state / "outputs" / f"{pair.stem}.png", output, overwrite=True)
        if needs_targets:
            save_image(state / "targets" / f"{pair.stem}.png", target, overwrite=True)
        boxes = gallery.previews(state, pair.stem, item, result, output, target)
        times = dict(result.times)
        if times:
            times["total"] = sum(times.values())
        records.append(
            {"stem": pair.stem, **scores, "time": times or None, **result.info, "crops": boxes}
        )
    return records
