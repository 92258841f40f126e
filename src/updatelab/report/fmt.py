"""Numbers and text as the dashboard prints them, HTML-escaped."""

from __future__ import annotations

import html
import math
from typing import Any

from updatelab.report import stats


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt_pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def fmt_seconds(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0 s"
    if v < 0.1:
        return f"{v:.3f} s"
    if v < 100:
        return f"{v:.1f} s"
    if v < 3600:
        return f"{v:.0f} s ({v / 60:.1f} min)"
    return f"{v:.0f} s ({v / 3600:.1f} h)"


def fmt_usd(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "$0"
    if v >= 1:
        return f"${v:,.2f}"
    decimals = max(2, 1 - int(math.floor(math.log10(abs(v)))))
    return f"${v:.{decimals}f}"


def fmt_num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_estimate(e: stats.Estimate | None, signed: bool = False) -> str:
    if e is None or e.mean is None:
        return '<span class="na">–</span>'
    main = fmt_pct(e.mean, signed)
    tip = f"{e.source}; n={e.n}" if e.n else e.source
    if e.per_seed:
        tip += "; per seed: " + ", ".join(f"s{k}: {100 * v:.1f}" for k, v in e.per_seed.items())
    ci = f'<span class="ci">[{fmt_pct(e.lo, signed)}, {fmt_pct(e.hi, signed)}]</span>' if e.has_ci else '<span class="ci">no CI</span>'
    cls = ""
    if signed and e.has_ci:
        cls = " pos" if e.lo > 0 else " neg" if e.hi < 0 else ""
    return f'<span class="est{cls}" title="{esc(tip)}">{main}</span> {ci}' + (fmt_test(e.test) if e.test else "")


def fmt_test(t: stats.McNemar) -> str:
    """'n 40 · p 0.003' under a paired difference; the discordant counts in the tooltip."""
    tip = f"exact McNemar test over {t.n} matched (seed, question) pairs: b = {t.b} arm right, baseline wrong; c = {t.c} the reverse"
    return f'<span class="ci test" title="{esc(tip)}">n {t.n} · p {esc(stats.fmt_p(t.p))}</span>'


def tokens(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def flops(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    e = int(math.floor(math.log10(abs(v))))
    return f"{v / 10 ** e:.1f}e{e}"
