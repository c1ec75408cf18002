"""A candlestick chart drawn on the server as SVG (no JavaScript, nothing from a CDN).

:func:`render_svg` is pure: rows in, an ``<svg>`` string out. Candles are spaced by index (no gaps
for nights, weekends or missing bars, like most trading charts), coloured green when the close is
at or above the open and red otherwise, with a volume pane below, a price grid on "nice" steps and
a ``<title>`` on every candle so a browser shows its values on hover.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

UP_COLOR = "#1a9b6c"
DOWN_COLOR = "#d64541"
GRID_COLOR = "#e3e6ea"
AXIS_COLOR = "#5f6b76"
MAX_CANDLES = 600
"""At most this many candles are drawn (the newest ones in the range); more would be sub-pixel."""


@dataclass(frozen=True)
class Candle:
    begin: str
    open: float
    high: float
    low: float
    close: float
    volume: int


def nice_step(span: float, target_ticks: int = 6) -> float:
    """A 1/2/2.5/5 x 10^k step that splits ``span`` into about ``target_ticks`` parts."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _decimals(step: float) -> int:
    """Decimal places that show every multiple of ``step`` exactly (0.25 -> 2, 5 -> 0)."""
    decimals = 0
    while decimals < 8 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9 * 10**decimals:
        decimals += 1
    return decimals


def _format_price(value: float, step: float) -> str:
    return f"{value:,.{_decimals(step)}f}".replace(",", " ")


def _price_text(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _format_volume(value: float) -> str:
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= threshold:
            return f"{value / threshold:.1f}{suffix}"
    return f"{value:.0f}"


def _time_label(begin: str, timeframe: str) -> str:
    stamp = dt.datetime.fromisoformat(begin)
    if timeframe in ("1m", "10m", "1h"):
        return stamp.strftime("%d.%m %H:%M")
    if timeframe in ("1d", "1w"):
        return stamp.strftime("%d.%m.%Y")
    return stamp.strftime("%m.%Y")


def render_svg(
    candles: Sequence[Candle],
    *,
    title: str,
    timeframe: str,
    width: int = 1100,
    height: int = 560,
) -> str:
    """An SVG document of the candles (oldest first), with price and volume panes and axes."""
    left, right, top, bottom = 12, 78, 34, 42
    volume_height = int((height - top - bottom) * 0.2)
    gap = 14
    price_height = height - top - bottom - volume_height - gap
    plot_width = width - left - right
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="candle-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold" fill="#1f2933">{escape(title)}</text>',
    ]
    if not candles:
        out.append(
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" font-size="16" '
            f'fill="{AXIS_COLOR}">No candles in this range</text></svg>'
        )
        return "".join(out)

    low = min(c.low for c in candles)
    high = max(c.high for c in candles)
    if high == low:
        high, low = high + 0.5, low - 0.5
    pad = (high - low) * 0.04
    low, high = low - pad, high + pad
    step = nice_step(high - low)
    max_volume = max(c.volume for c in candles) or 1

    def y_price(value: float) -> float:
        return top + (high - value) / (high - low) * price_height

    volume_top = top + price_height + gap

    def y_volume(value: float) -> float:
        return volume_top + volume_height - value / max_volume * volume_height

    # Price grid and labels.
    tick = math.ceil(low / step) * step
    while tick <= high:
        y = y_price(tick)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_width}" y2="{y:.1f}" stroke="{GRID_COLOR}"/>'
            f'<text x="{left + plot_width + 6}" y="{y + 4:.1f}" fill="{AXIS_COLOR}">'
            f"{_format_price(tick, step)}</text>"
        )
        tick += step
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_width}" height="{price_height}" fill="none" '
        f'stroke="{AXIS_COLOR}" stroke-width="0.6"/>'
        f'<rect x="{left}" y="{volume_top}" width="{plot_width}" height="{volume_height}" fill="none" '
        f'stroke="{AXIS_COLOR}" stroke-width="0.6"/>'
        f'<text x="{left + plot_width + 6}" y="{volume_top + 10}" fill="{AXIS_COLOR}">'
        f"{_format_volume(max_volume)}</text>"
        f'<text x="{left + 4}" y="{volume_top + 12}" fill="{AXIS_COLOR}">volume</text>'
    )

    slot = plot_width / len(candles)
    body_width = max(1.0, slot * 0.7)
    label_every = max(1, math.ceil(len(candles) / max(1, plot_width // 110)))
    for index, candle in enumerate(candles):
        x = left + slot * index + slot / 2
        up = candle.close >= candle.open
        color = UP_COLOR if up else DOWN_COLOR
        top_body = y_price(max(candle.open, candle.close))
        body_height = max(1.0, abs(y_price(candle.open) - y_price(candle.close)))
        tooltip = (
            f"{candle.begin}  O {candle.open:g}  H {candle.high:g}  L {candle.low:g}  "
            f"C {candle.close:g}  V {candle.volume}"
        )
        vol_y = y_volume(candle.volume)
        out.append(
            f'<g class="candle {"up" if up else "down"}"><title>{escape(tooltip)}</title>'
            f'<line x1="{x:.2f}" y1="{y_price(candle.high):.2f}" x2="{x:.2f}" y2="{y_price(candle.low):.2f}" '
            f'stroke="{color}" stroke-width="1"/>'
            f'<rect x="{x - body_width / 2:.2f}" y="{top_body:.2f}" width="{body_width:.2f}" '
            f'height="{body_height:.2f}" fill="{color}"/>'
            f'<rect x="{x - body_width / 2:.2f}" y="{vol_y:.2f}" width="{body_width:.2f}" '
            f'height="{volume_top + volume_height - vol_y:.2f}" fill="{color}" fill-opacity="0.45"/></g>'
        )
        if index % label_every == 0:
            # Keep the label inside the plot: anchor the edge labels at their start/end.
            anchor = "middle"
            if x < left + 40:
                anchor = "start"
            elif x > left + plot_width - 40:
                anchor = "end"
            out.append(
                f'<line x1="{x:.2f}" y1="{volume_top + volume_height}" x2="{x:.2f}" '
                f'y2="{volume_top + volume_height + 4}" stroke="{AXIS_COLOR}"/>'
                f'<text x="{x:.2f}" y="{volume_top + volume_height + 17}" text-anchor="{anchor}" '
                f'fill="{AXIS_COLOR}">{escape(_time_label(candle.begin, timeframe))}</text>'
            )
    last = candles[-1]
    y_last = y_price(last.close)
    color = UP_COLOR if last.close >= last.open else DOWN_COLOR
    out.append(
        f'<line x1="{left}" y1="{y_last:.1f}" x2="{left + plot_width}" y2="{y_last:.1f}" stroke="{color}" '
        f'stroke-dasharray="3 3" stroke-width="0.8"/>'
        f'<rect x="{left + plot_width + 1}" y="{y_last - 8:.1f}" width="{right - 3}" height="16" '
        f'fill="{color}"/>'
        f'<text x="{left + plot_width + 6}" y="{y_last + 4:.1f}" fill="#ffffff" font-weight="bold">'
        f"{_price_text(last.close)}</text>"
    )
    out.append("</svg>")
    return "".join(out)
