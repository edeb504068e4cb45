"""Draw loss and tokens/sec around an incident as a PNG (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

import io
import math

from sentinel.notify.message import Series

# Small enough to upload in one request and read on a phone; wide enough for the curve.
FIGSIZE_IN = (8.0, 4.5)
DPI = 100


def render_png(series: Series, title: str) -> bytes:
    """Return a PNG with the loss on top and tokens/sec below, the incident step marked."""
    # Imported here: matplotlib costs ~0.3 s to import and only this needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    has_tps = any(v is not None for v in series.tokens_per_sec)
    axes = fig.subplots(2 if has_tps else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax_loss = axes[0]

    finite = [(s, v) for s, v in zip(series.step, series.loss, strict=True) if math.isfinite(v)]
    bad = [s for s, v in zip(series.step, series.loss, strict=True) if not math.isfinite(v)]
    if finite:
        ax_loss.plot([s for s, _ in finite], [v for _, v in finite], lw=1.0, color="tab:blue")
    for s in bad:
        # A NaN/Inf loss has no height: mark its step across the whole axis.
        ax_loss.axvline(s, color="tab:red", lw=0.8, alpha=0.6)
    ax_loss.set_ylabel("loss")
    if bad:
        ax_loss.text(
            0.01, 0.95, f"{len(bad)} non-finite", transform=ax_loss.transAxes,
            color="tab:red", va="top", fontsize=8,
        )

    if has_tps:
        ax_tps = axes[1]
        pts = [
            (s, v)
            for s, v in zip(series.step, series.tokens_per_sec, strict=True)
            if v is not None and math.isfinite(v)
        ]
        ax_tps.plot([s for s, _ in pts], [v for _, v in pts], lw=1.0, color="tab:green")
        ax_tps.set_ylabel("tokens/s")
    axes[-1].set_xlabel("step")
    if series.mark_step is not None:
        for ax in axes:
            ax.axvline(series.mark_step, color="tab:orange", ls="--", lw=1.0)
    fig.suptitle(title[:120], fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def summarize(series: Series) -> str:
    """Describe the curves in one line, for when the PNG cannot be uploaded."""
    finite = [v for v in series.loss if math.isfinite(v)]
    parts = [f"steps {series.step[0]}..{series.step[-1]}" if series.step else "no steps"]
    if finite:
        parts.append(f"loss min {min(finite):.4g} max {max(finite):.4g} last {series.loss[-1]:.4g}")
    nonfinite = len(series.loss) - len(finite)
    if nonfinite:
        parts.append(f"{nonfinite} non-finite loss values")
    tps = [v for v in series.tokens_per_sec if v is not None and math.isfinite(v)]
    if tps:
        parts.append(f"tokens/s min {min(tps):.4g} max {max(tps):.4g} last {tps[-1]:.4g}")
    if series.mark_step is not None:
        parts.append(f"incident at step {series.mark_step}")
    return "; ".join(parts)
