"""The dashboard's HTML tables: summary, paired differences, cost by phase, knowledge-base drift, runs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from updatelab.report import stats
from updatelab.report.aggregate import PHASES, Analysis, Group, lm_untouched
from updatelab.report.fmt import esc, flops, fmt_estimate, fmt_num, fmt_pct, fmt_seconds, fmt_usd, tokens
from updatelab.report.records import dig, display, mean_of


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", header_titles: Sequence[str] | None = None) -> str:
    th = "".join(f'<th title="{esc(t)}">{h}</th>' if t else f"<th>{h}</th>"
                 for h, t in zip(headers, header_titles or [""] * len(headers)))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def arm_cell(g: Group) -> str:
    sw = f'<span class="swatch" style="background:{_hex(g.colour)}"></span>'
    return f'{sw}<b>{esc(g.strategy)}</b>' + (
        '<br><span class="variant">' + esc(", ".join(f"{k}={display(v)}" for k, v in g.variant)) + "</span>" if g.variant else "")


def _hex(c: Any) -> str:
    try:
        from matplotlib.colors import to_hex

        return to_hex(c)
    except (ValueError, TypeError, ImportError):
        return "#999999"


SHIFT_COLUMNS = (
    ("shift.lm.kl_mean", "KL<br><small>LM, nats/token</small>",
     "mean KL(base LM || updated LM) of the next-token distributions on the general probe text"),
    ("shift.lm.intruders_total", "intruders<br><small>LM</small>",
     "intruder dimensions summed over the adapted modules (top singular vectors of the updated weight far from every base one)"),
)


def summary_table(a: Analysis) -> str:
    k = a.top_k
    sizes = {s: stats.fmt_sizes(stats.questions_per_world(a.records, s)) for s in a.splits}
    headers = ["arm", "seeds", *[f"{s}<br><small>acc. % [95% CI]<br>n {sizes[s]} / seed</small>" for s in a.splits],
               f"recall@{k}<br><small>% · MRR</small>", "CKA mean<br><small>LM</small>", "CKA min<br><small>LM</small>",
               "update<br><small>time · $</small>", "serving / 1k queries<br><small>time · $</small>"]
    titles = ["strategy (and grid point)", "distinct seeds (runs)",
              *[f"accuracy on the {s} split: % answers containing the gold answer; CI: bootstrap resampling seeds, "
                f"then questions within each seed; n: questions per seed" for s in a.splits],
              "share of questions whose gold document is in the top k retrieved; below: mean reciprocal rank",
              "mean over layers of CKA(base LM, updated LM)", "lowest layer CKA",
              "wall time of the one-off update (embed + index + train), priced at the configured $/hour",
              "serving wall time (retrieve + generate) scaled to 1,000 queries, and its price"]
    # Shift beyond CKA: a column only when some record measured it.
    extra = [(path, head, title) for path, head, title in SHIFT_COLUMNS if any(g.mean(path) is not None for g in a.groups)]
    headers += [head for _, head, _ in extra]
    titles += [title for _, _, title in extra]
    rows = []
    for g in a.groups:
        rec_k = g.mean(f"metrics.retrieval.recall@{k}")
        mrr = g.mean("metrics.retrieval.mrr")
        closed = rec_k is None and all(dig(r, "metrics") and not dig(r, "metrics.retrieval") for r in g.records)
        if closed:
            recall = '<span class="na">closed-book</span>'
        else:
            recall = fmt_pct(rec_k) + (f'<span class="ci">MRR {fmt_num(mrr)}</span>' if mrr is not None else "")
        cka_mean, cka_min = g.mean("shift.lm.cka_mean"), g.mean("shift.lm.cka_min")
        cka_m = fmt_num(cka_mean)
        if cka_mean is not None and lm_untouched(g):
            cka_m += '<span class="ci">LM untouched</span>'
        n_runs, seeds = len(g.records), len(g.seeds)
        update = fmt_seconds(g.mean("cost.update_total.wall_s"))
        u_usd = g.mean("cost.update_total.usd")
        serve = fmt_seconds(g.mean("cost.serving_per_1k.wall_s"))
        s_usd = g.mean("cost.serving_per_1k.usd")
        rows.append([
            arm_cell(g), f"{seeds}" + (f" ({n_runs} runs)" if n_runs != seeds else ""),
            *[fmt_estimate(g.acc.get(s)) for s in a.splits],
            recall, cka_m, fmt_num(cka_min),
            update + (f'<span class="ci">{fmt_usd(u_usd)}</span>' if u_usd is not None else ""),
            serve + (f'<span class="ci">{fmt_usd(s_usd)}</span>' if s_usd is not None else ""),
            *[fmt_num(g.mean(path), 4 if path.endswith("kl_mean") else 1) for path, _, _ in extra],
        ])
    return table(headers, rows, "summary", titles)


def differences_tables(a: Analysis) -> str:
    if not a.diffs:
        return ('<div class="note">No paired differences: they need per-question predictions of an arm and of a '
                "baseline arm (stale or reembed) on the same seed.</div>")
    out = []
    for b, rows in a.diffs.items():
        splits = [s for s in a.splits if s in rows[0][1]]
        splits += [k for k in rows[0][1] if k.startswith("recall@") and any(d.get(k) for _, d in rows)]
        body = []
        for g, d in rows:
            seeds = max((e.n_seeds for e in d.values() if e), default=0)
            body.append([arm_cell(g), *[fmt_estimate(d.get(s), signed=True) for s in splits], str(seeds or "–")])
        what = f" (forgetting reference: {' and '.join(splits)} only)" if b == stats.FORGETTING_REFERENCE else ""
        out.append(f"<h3>vs <code>{esc(b)}</code>{esc(what)}</h3>" + table(
            ["arm", *[f"{s}<br><small>Δ pp [95% CI]<br>n pairs · McNemar p</small>" for s in splits], "seeds"], body, "diffs"))
    return "".join(out)


def cost_table(a: Analysis) -> str:
    rows = []
    for g in a.groups:
        cells = []
        for p in PHASES:
            w = g.mean(f"cost.{p}.wall_s")
            t = g.mean(f"cost.{p}.tokens")
            cells.append("–" if w is None else f"{fmt_seconds(w)}<br><span class=\"ci\">{tokens(t)} tok</span>")
        reused = [dig(r, "cost.train.reused_adapter") for r in g.records]
        extra = '<br><span class="ci">adapter reused (training time booked)</span>' if any(reused) else ""
        rows.append([arm_cell(g), *cells, fmt_seconds(g.mean("cost.total.wall_s")) + extra,
                     tokens(g.mean("cost.serving_per_1k.prompt_tokens")), flops(g.mean("cost.update_total.flops"))])
    return table(["arm", *PHASES, "total", "prompt tokens / 1k q", "update FLOPs"], rows, "cost")


def drift_table(a: Analysis) -> str:
    rows = []
    for g in a.groups:
        d = [dig(r, "shift.kb_drift") for r in g.records]
        d = [x for x in d if isinstance(x, Mapping)]
        if not d:
            rows.append([arm_cell(g), '<span class="na">not measured</span>', "", "", ""])
            continue
        applied = [x for x in d if x.get("applied", True) is not False and "changed" in x]
        if not applied:
            rows.append([arm_cell(g), f'<span class="na">not applied: {esc(d[0].get("note", ""))}</span>', "", "", ""])
            continue
        mean = lambda p: mean_of(dig(x, p) for x in applied)  # noqa: E731
        rows.append([arm_cell(g), fmt_num(mean("changed.mean")), fmt_num(mean("changed.min")),
                     fmt_num(mean("unchanged.mean")), f"{mean('n_new_docs') or 0:.0f} / {mean('n_removed_docs') or 0:.0f}"])
    return table(["arm", "cos(v0, v1) changed docs, mean", "changed, min", "unchanged docs, mean", "new / removed docs"],
                 rows, "drift")


def runs_table(a: Analysis) -> str:
    rows = []
    for r in sorted(a.records, key=lambda r: (stats.arm_rank(str(r.get("strategy"))), str(r.get("seed")), str(r.get("run_id")))):
        lacking = [k for k in ("metrics", "cost", "shift", "predictions", "config") if not r.get(k)]
        rows.append([esc(r.get("run_id", "?")), esc(r.get("strategy", "?")), esc(r.get("seed", "?")),
                     f"<code>{esc(str(r.get('data_fingerprint') or '–')[:12])}</code>", esc(r.get("finished_at") or r.get("source") or "–"),
                     esc(len(r.get("predictions") or [])), esc(", ".join(lacking) or "–")])
    return table(["run id", "strategy", "seed", "data fingerprint", "finished", "predictions", "missing"], rows, "runs")
