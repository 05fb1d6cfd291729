"""TensorBoard helpers for training runs: grouped tags, hparams per run, figures as images.

TensorBoard groups scalars by the part of the tag before the first "/". ``group_tag`` maps the metric names
of a training run's metrics.csv to such groups:

    train_loss            -> loss/train            heldout_labels_loss -> loss/heldout_labels
    train_acc             -> accuracy/train        ind_strength_L1H2  -> heads/induction_strength/L1H2
    task_prev_L0H3        -> heads/task_prev/L0H3  prev_L0H1 / induction_L1H0 -> heads/prev/L0H1, ...
    anything else         -> other/<name>          (a name that already holds "/" is kept)

Wiring (for ``train/``): ``writer.add_scalar(group_tag(k), v, step)`` for each metric;
``write_hparams(writer, cfg, summary["final"])`` once at the end of a run; ``add_figure(writer,
"figures/story", fig, step)`` for the key figures.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from ..errors import IclscopeError

_HEAD = re.compile(r"^(?P<kind>[a-z_]+?)_(?P<head>L\d+H\d+)$")


def group_tag(name: str) -> str:
    """The grouped TensorBoard tag of a metric name (see the module docstring)."""
    name = str(name)
    if not name:
        raise IclscopeError("group_tag: the metric name is empty")
    if "/" in name:
        return name
    m = _HEAD.match(name)
    if m:
        kind = "induction_strength" if m["kind"] == "ind_strength" else m["kind"]
        return f"heads/{kind}/{m['head']}"
    if name.endswith("_loss"):
        return f"loss/{name[: -len('_loss')]}"
    if name == "loss":
        return "loss/loss"
    if name.endswith("_acc") or name.endswith("_accuracy"):
        return f"accuracy/{name.rsplit('_', 1)[0]}"
    return f"other/{name}"


def flatten_config(cfg: Any, prefix: str = "") -> dict:
    """A nested config as flat hparams (dotted keys; values TensorBoard accepts: bool, int, float, str;
    lists and None as their string)."""
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1] if prefix else "value"
    if isinstance(cfg, bool) or isinstance(cfg, str):
        out[key] = cfg
    elif isinstance(cfg, (int, float)):
        out[key] = cfg if not (isinstance(cfg, float) and not math.isfinite(cfg)) else str(cfg)
    else:
        out[key] = str(cfg)
    return out


def write_hparams(writer, cfg: dict, final_metrics: dict, run_name: str = ".") -> dict:
    """Record a run's settings and its final metrics in TensorBoard's HPARAMS tab (one row per run, so
    runs with different settings can be compared). ``writer``: a ``torch.utils.tensorboard
    .SummaryWriter``; ``cfg``: the (nested) config; ``final_metrics``: name -> number (non-finite and
    non-numeric values are left out), tagged with ``group_tag``. Returns the metric dict written."""
    if not isinstance(cfg, dict):
        raise IclscopeError(f"write_hparams: cfg must be a dict, got {type(cfg).__name__}")
    metrics = {}
    for k, v in (final_metrics or {}).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and not isinstance(v, bool):
            metrics[f"hparam/{group_tag(k)}"] = f
    writer.add_hparams(flatten_config(cfg), metrics, run_name=run_name)
    return metrics


def add_figure(writer, tag: str, fig, step: int, close: bool = True) -> None:
    """A matplotlib figure as an image under ``tag`` (e.g. "figures/story") at ``step``, rendered in
    the reports' shared look (``figures.common.figure_png``)."""
    import numpy as np
    from PIL import Image

    from .figures.common import figure_png
    png = figure_png(fig, close=close)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8
    writer.add_image(tag, img, int(step), dataformats="HWC")
