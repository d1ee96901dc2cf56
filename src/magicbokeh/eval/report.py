"""``report.json`` and ``report.md`` of an evaluation, and tables that compare reports.

``report.json``::

    {"protocol": "bokeh" | "sr", "method": "<engine or method>", "count": N,
     "metrics": [names in report order], "unavailable": {name: "not available: <reason>"},
     "images": [{"stem": ..., "psnr": ..., "ssim": ..., ...,
                 "time": {"<stage>": s, "total": s} | null, <engine decisions>, "crops": ...}],
     "means": {"psnr": ..., ..., "fid": ..., "time": {"<stage>": s, "total": s}},
     "settings": {...}, "conventions": {...}, "unmatched": {...}, "versions": {...},
     "created": "<ISO 8601 UTC>"}

Every image has every metric under its name: a number, ``"inf"`` (PSNR of identical images)
or the column's ``"not available: ..."`` text. Means are plain means over the images (FID is a
set metric and has only a mean).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from magicbokeh.errors import MagicBokehError
from magicbokeh.eval.scoring import METRICS
from magicbokeh.io.atomic import atomic_write

__all__ = [
    "REPORT_FILES",
    "build",
    "compare_table",
    "markdown",
    "plain_json",
    "read",
    "write",
    "write_json",
]

REPORT_FILES = ("report.json", "report.md", "gallery.html")
TIME_LABEL = "Time (s)"


def plain_json(value: object) -> object:
    """JSON-ready copy: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``;
    paths become strings."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return plain_json(value.item())
    return value


def write_json(path: Path, value: object) -> None:
    """Write ``value`` as indented JSON (see :func:`plain_json`), atomically, replacing it."""
    text = json.dumps(plain_json(value), indent=2, allow_nan=False) + "\n"
    with atomic_write(path, overwrite=True) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _number(value: object) -> float | None:
    """A metric value as a float (``"inf"`` → inf), None for "not available"."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return None


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _time_means(images: list[dict]) -> dict[str, float] | None:
    timed = [r["time"] for r in images if r.get("time")]
    if not timed:
        return None
    stages = list(dict.fromkeys(k for t in timed for k in t))
    return {k: _mean([t[k] for t in timed if k in t]) for k in stages}


def conventions(settings: dict) -> dict[str, str]:
    """How each metric family was computed, in words (stored in the report)."""
    crop = settings.get("crop_border", 0)
    border = f", {crop} px cropped from each side" if crop else ", whole image"
    if settings.get("y_channel"):
        psnr_ssim = (
            "pyiqa/OSEDiff Y convention: BT.601 Y (16–235) of the RGB values; PSNR on Y in [0, 1] "
            "with 1e-8 added to the MSE; SSIM on round(255·Y), Gaussian window σ 1.5, 11 taps, "
            f"contrast-structure term clamped at 0{border}"
        )
    else:
        psnr_ssim = (
            "8-bit RGB: both images rounded to 0..255, all three channels, data range 255; "
            "SSIM of Wang et al. with a Gaussian window σ 1.5, 11 taps, valid region, mean of "
            f"the channels{border}"
        )
    return {
        "psnr_ssim": psnr_ssim,
        "lpips": "LPIPS v0.1 (lpips package equivalent), inputs in [0, 1] (normalize=True); "
        "lpips = AlexNet, lpips-vgg = VGG16",
        "pyiqa": "DISTS, CLIP-IQA, NIQE, MUSIQ (KonIQ), MANIQA (PIPAL) and FID (clean-fid, "
        "Inception) through pyiqa with its default settings",
        "outputs": "outputs are rounded to 8 bits before every metric (as saved in outputs/)",
        "time": "wall-clock seconds per image and stage (batched work split evenly); model "
        "loading excluded",
    }


def build(evaluation, records: list[dict], set_values: dict[str, float]) -> dict:
    """The report dict of a finished run (see the module doc)."""
    from magicbokeh.io.sidecar import package_versions

    scorer = evaluation.scorer
    missing = {n: f"not available: {r}" for n, r in scorer.unavailable.items()}
    images = []
    for record in records:
        image = {"stem": record["stem"]}
        for name in scorer.names:
            if METRICS[name].kind != "set":
                image[name] = missing.get(name, record.get(name))
        image.update({k: v for k, v in record.items() if k not in image})
        images.append(image)
    means: dict[str, object] = {}
    for name in scorer.names:
        if name in missing:
            means[name] = missing[name]
        elif METRICS[name].kind == "set":
            means[name] = set_values.get(name)
        else:
            means[name] = _mean([_number(r[name]) for r in images])
    means["time"] = _time_means(images)
    settings = evaluation.settings
    return {
        "protocol": evaluation.protocol,
        "method": settings.get("method_label"),
        "count": len(images),
        "metrics": list(scorer.names),
        "unavailable": missing,
        "unavailable_details": dict(scorer.details),
        "images": images,
        "means": means,
        "stages": list(getattr(evaluation.engine, "stages", ())),
        "settings": settings,
        "conventions": conventions(settings),
        "unmatched": evaluation.pairs.unmatched,
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cell(value: object, name: str) -> str:
    number = _number(value)
    if number is None:
        return str(value) if value is not None else "–"
    if name == "time":
        return f"{number:.3f}"
    return f"{number:.{METRICS[name].decimals}f}"


def _header(names: list[str], with_time: bool) -> list[str]:
    arrows = [f"{METRICS[n].label} {'↑' if METRICS[n].higher_better else '↓'}" for n in names]
    return ["Method", *arrows, *([f"{TIME_LABEL} ↓"] if with_time else [])]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def protocol_text(result: dict) -> str:
    """The protocol paragraph printed above the table."""
    s = result["settings"]
    parts = [
        f"{result['count']} {'pairs' if result['protocol'] == 'bokeh' else 'LQ/HQ pairs'} from "
        f"`{s.get('data')}` (layout {s.get('layout')})"
    ]
    if result["protocol"] == "bokeh":
        k = (
            "fitted per image to the target (oracle)"
            if s.get("fit_aperture")
            else s.get("aperture")
        )
        parts += [
            f"engine `{s.get('method_label')}`",
            f"depth: {s.get('depth')}",
            f"focus: {s.get('focus')}",
            f"K = {k}",
            f"degradation: {s.get('degrade') or 'none (inputs as stored)'}",
        ]
    else:
        parts.append(f"method `{s.get('method_label')}`")
    parts += [
        f"scale {s.get('scale')}",
        f"size {s.get('size') or 'as stored'}",
        f"device {s.get('device')}",
    ]
    text = "; ".join(parts) + "."
    for key, value in result["conventions"].items():
        text += f"\n- {key.replace('_', '/')}: {value}"
    return text


def markdown(result: dict) -> str:
    """``report.md``: title, protocol, the table, per-stage times, what was not available."""
    names = [n for n in result["metrics"]]
    time = (result["means"].get("time") or {}).get("total")
    row = [f"{result['method']}"] + [_cell(result["means"].get(n), n) for n in names]
    if time is not None or result["stages"]:
        row.append(_cell(time, "time"))
    text = f"# magicbokeh eval {result['protocol']}: {result['method']}\n\n"
    text += protocol_text(result) + "\n\n"
    text += _table(_header(names, len(row) > len(names) + 1), [row]) + "\n"
    stage_times = result["means"].get("time") or {}
    if len(stage_times) > 1:
        text += "\nTime per stage, mean seconds per image: " + ", ".join(
            f"{k} {v:.3f}" for k, v in stage_times.items()
        )
        text += "\n"
    if result["unmatched"]:
        text += "\nLeft out (no partner): " + "; ".join(
            f"{folder} lacks {', '.join(stems)}" for folder, stems in result["unmatched"].items()
        )
        text += "\n"
    text += f"\nCreated {result['created']} with magicbokeh {result['versions']['magicbokeh']}.\n"
    return text


def write(report_dir: Path, result: dict) -> None:
    """Write ``report.md`` and then ``report.json`` (atomically)."""
    with atomic_write(report_dir / "report.md", overwrite=True) as temporary:
        temporary.write_text(markdown(result), encoding="utf-8")
    write_json(report_dir / "report.json", result)


def read(path: str | Path) -> dict:
    """A report from its folder or its ``report.json``.

    Raises:
        MagicBokehError: missing or not a report.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "report.json"
    if not file.is_file():
        raise MagicBokehError(f"{file} does not exist; give report folders made by magicbokeh eval")
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MagicBokehError(f"{file} is not a JSON report") from None
    if not isinstance(result, dict) or not {"images", "metrics", "means"} <= set(result):
        raise MagicBokehError(f"{file} is not a magicbokeh eval report")
    return result


def compare_table(results: list[dict], labels: list[str]) -> str:
    """Reports side by side: one row each, the union of their metrics in report order, the
    best value of each column in bold and the second underlined.

    When the reports scored different images, per-image metrics and times are averaged over
    the images all of them share (said below the table); set metrics (FID) are kept as they
    were computed.
    """
    names = [n for n in METRICS if any(n in r["metrics"] for r in results)]
    stem_sets = [{i["stem"] for i in r["images"]} for r in results]
    common = set.intersection(*stem_sets)
    same = all(s == stem_sets[0] for s in stem_sets)
    columns: list[list[float | None | str]] = []
    for name in names:
        column = []
        for r in results:
            if name not in r["metrics"]:
                column.append(None)
            elif not same and METRICS[name].kind != "set":
                values = [_number(i.get(name)) for i in r["images"] if i["stem"] in common]
                column.append(
                    r["means"].get(name) if None in values else _mean(values)  # type: ignore[arg-type]
                )
            else:
                column.append(r["means"].get(name))
        columns.append(column)
    times = []
    for r in results:
        timed = [i["time"]["total"] for i in r["images"] if i.get("time") and i["stem"] in common]
        times.append(_mean(timed))
    header = _header(names, True)
    cells = [[label] for label in labels]
    for name, column in zip([*names, "time"], [*columns, times], strict=True):
        better_high = name != "time" and METRICS[name].higher_better
        numbers = sorted(
            {v for v in (_number(c) for c in column) if v is not None and not math.isnan(v)},
            reverse=better_high,
        )
        for row, value in zip(cells, column, strict=True):
            text = _cell(value, name)
            number = _number(value)
            if len(results) > 1 and number is not None and numbers:
                if number == numbers[0]:
                    text = f"**{text}**"
                elif len(numbers) > 1 and number == numbers[1]:
                    text = f"<u>{text}</u>"
            row.append(text)
    text = _table(header, cells) + "\n"
    if not same:
        text += (
            f"\nThe reports scored different images: per-image metrics and times are means over "
            f"the {len(common)} images all of them share; FID is as each report computed it.\n"
        )
    return text
