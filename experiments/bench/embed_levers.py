"""Benchmark: levers for KB embedding speed, each against the configured `Embedder` (and ST fp32 vectors).

Same model folder (all-MiniLM-L6-v2), same 2,000 documents and 200 queries as embed_throughput.
Every side encodes all documents after a warm-up call, in a fresh process, sides alternated;
its vectors are compared with `SentenceTransformer.encode`'s fp32 vectors (cosine, top-10
overlap of FAISS flat search), because a lever is kept only where retrieval stays the same.

  ours          `build_embedder(path, configs/embedder/minilm_l6.yaml)`: autocast as chosen
                by measurement, length-sorted batches of the configured size
  batch_128     the same with batch_size 128
  bf16_weights  the model cast to bf16 (no autocast): no per-call weight casts
  compile       `torch.compile(model, dynamic=True)` under the same autocast; the warm-up
                call compiles, its seconds are reported apart
  ort_fp32      ONNX Runtime (CPU provider, the same thread count) on the model exported with
                `torch.onnx.export`, our batching and pooling; what sentence-transformers'
                ``backend="onnx"`` runs, which itself needs optimum-onnx (it pins transformers
                4.x, not installable beside this project's transformers 5)
  ort_int8      the same graph with ONNX Runtime's dynamic int8 quantization of the weights
  ov_f32        the configured `Embedder` with ``runtime: openvino``: OpenVINO's CPU plugin on the
                model converted by `openvino.convert_model` (the same thread count), our batching
                and pooling, inference precision f32; what sentence-transformers'
                ``backend="openvino"`` runs (it needs optimum-intel)
  ov_bf16       the same with inference precision bf16
  st            `SentenceTransformer.encode` defaults (fp32, batch 32): the reference vectors

    python experiments/bench/embed_levers.py            # 2,000 docs, 200 queries, 3 repeats
    python experiments/bench/embed_levers.py --quick    # 200 docs, 50 queries, 1 repeat

The ORT sides need ``pip install onnxruntime onnx``, the OpenVINO sides ``pip install openvino`` (the
``bench`` extra; `make bench` installs them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
from embed_throughput import GOAL_COSINE, GOAL_OVERLAP, agreement

NAME = "embed_levers"
SIDES = ["ours", "batch_128", "bf16_weights", "compile", "ort_fp32", "ort_int8", "ov_f32", "ov_bf16", "st"]
REFERENCE = "st"
OV_PRECISION = {"ov_f32": "float32", "ov_bf16": "bfloat16"}  # embedder.runtime=openvino at this precision


def _ort_encoder(path: str, tokenizer, threads: int, batch_size: int, max_length: int, work: Path, int8: bool):
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    from updatelab.retrieval.openvino_runtime import LastHidden

    graph = work / "embedder.onnx"
    model = LastHidden(AutoModel.from_pretrained(path, attn_implementation="eager").eval())
    example = tokenizer(["a short text", "another one"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(model, (example["input_ids"], example["attention_mask"]), str(graph), opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes}, dynamo=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = work / "embedder_int8.onnx"
        quantize_dynamic(str(graph), str(quantized), weight_type=QuantType.QInt8)
        graph = quantized
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def encode(texts):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        out = np.zeros((len(texts), session.get_outputs()[0].shape[-1] or 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(enc[i]) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, : len(enc[i])], mask[row, : len(enc[i])] = enc[i], 1
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            vec = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[batch] = vec / np.linalg.norm(vec, axis=1, keepdims=True)
        return out

    return encode


def worker(side: str, p: dict) -> dict:
    import numpy as np
    import torch

    bl.set_threads(p["threads"])
    data = json.loads(Path(p["data_file"]).read_text())
    docs, queries = data["docs"], data["queries"]
    path = bl.embedder_path()
    cfg = dict(p["embedder"], **({"batch_size": 128} if side == "batch_128" else {}),
               **({"runtime": "openvino", "autocast": OV_PRECISION[side]} if side in OV_PRECISION else {}))
    info: dict = {}
    if side == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device="cpu")
        encode, encode_queries = model.encode, model.encode
        info = {"batch_size": 32, "compute": "fp32"}
    elif side.startswith("ort_"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        with bl.timed() as export:
            encode = _ort_encoder(path, tokenizer, p["threads"], cfg["batch_size"], cfg["max_length"],
                                  Path(p["work_dir"]), int8=side == "ort_int8")
        encode_queries = encode
        info = {"batch_size": cfg["batch_size"], "compute": "int8 weights" if side == "ort_int8" else "fp32",
                "export_s": export.wall_s}
    else:
        from updatelab.retrieval.embedder import build_embedder

        emb = build_embedder(path, cfg)
        if side == "bf16_weights":
            emb.model, emb.autocast = emb.model.to(torch.bfloat16), None
        if side == "compile":
            emb.model = torch.compile(emb.model, dynamic=True)
        encode = lambda texts: emb.encode(texts)[0]  # noqa: E731
        encode_queries = emb.encode_queries
        compute = "bf16 weights" if side == "bf16_weights" else emb.autocast
        info = {"batch_size": emb.batch_size, "compute": f"OpenVINO {compute}" if side in OV_PRECISION else compute}
    start = time.perf_counter()
    encode(docs[:16])  # warm-up (compiles, for `compile`)
    info["warmup_s"] = time.perf_counter() - start
    with bl.timed() as t:
        vecs = encode(docs)
    qvecs = encode_queries(queries)
    np.save(Path(p["vec_dir"]) / f"{side}_{p['repeat']}_docs.npy", np.asarray(vecs, dtype=np.float32))
    np.save(Path(p["vec_dir"]) / f"{side}_{p['repeat']}_queries.npy", np.asarray(qvecs, dtype=np.float32))
    return {"n_docs": len(docs), "docs_per_s": len(docs) / t.wall_s, **t.as_dict(), **info}


def _available(side: str) -> str | None:
    """Why a side cannot run here (None: it can)."""
    if side.startswith("ort_"):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"not installed ({e.name}): pip install onnxruntime onnx"
    if side in OV_PRECISION:
        from updatelab.retrieval import openvino_runtime

        if not openvino_runtime.available():
            return f"not installed: {openvino_runtime.INSTALL_HINT}"
    return None


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    repeats = args.repeats or (1 if args.quick else 3)
    n_docs = args.docs or (200 if args.quick else 2000)
    n_queries = args.queries or (50 if args.quick else 200)
    skipped = {s: why for s in SIDES if (why := _available(s))}
    sides = [s for s in SIDES if s not in skipped]
    corpus = bl.synthetic_corpus(n_docs, n_queries)
    emb_cfg = bl.default_embedder_cfg()
    print(f"[{NAME}] {n_docs} documents, {n_queries} queries, {repeats} repeats, {args.threads} threads; "
          f"skipped: {skipped or 'none'}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        data_file = Path(d) / "data.json"
        data_file.write_text(json.dumps(corpus))
        counter = {s: 0 for s in sides}

        def params_for(side: str) -> dict:
            rep, counter[side] = counter[side], counter[side] + 1
            work = Path(tempfile.mkdtemp(dir=d))
            return {"threads": args.threads, "data_file": str(data_file), "vec_dir": d, "work_dir": str(work),
                    "repeat": rep, "embedder": emb_cfg}

        runs = bl.run_alternating(
            Path(__file__), sides, repeats, params_for,
            describe=lambda r: f"{r['docs_per_s']:8.1f} docs/s  (warm-up {r['warmup_s']:.1f} s)",
            quiet=bl.quiet_of(args))
        load = lambda side, kind: np.load(Path(d) / f"{side}_0_{kind}.npy")  # noqa: E731
        agree = {s: agreement(load(s, "docs"), load(s, "queries"), load(REFERENCE, "docs"), load(REFERENCE, "queries"))
                 for s in sides if s != REFERENCE}

    speed = {s: bl.paired_ratio([r["docs_per_s"] for r in runs[s]], [r["docs_per_s"] for r in runs["ours"]])
             for s in sides if s != "ours"}
    vs_st = {s: bl.paired_ratio([r["docs_per_s"] for r in runs[s]], [r["docs_per_s"] for r in runs[REFERENCE]])
             for s in sides if s != REFERENCE}
    keeps = {s: agree[s]["topk_overlap_mean"] >= GOAL_OVERLAP and agree[s]["doc_cosine_min"] >= GOAL_COSINE
             for s in agree}
    return {
        "name": NAME, "quick": bool(args.quick), "command": bl.command_line(), "machine": bl.machine_info(args.threads),
        "config": {"docs": n_docs, "queries": n_queries, "repeats": repeats, "embedder": emb_cfg},
        "skipped": skipped,
        "sides": {s: {"docs_per_s": bl.summarize([r["docs_per_s"] for r in runs[s]]),
                      "warmup_s": bl.summarize([r["warmup_s"] for r in runs[s]]),
                      "export_s": bl.summarize_known([r.get("export_s") for r in runs[s]]),
                      "others_busy_cores": bl.summarize_known([r["others_busy_cores"] for r in runs[s]]),
                      "batch_size": runs[s][0]["batch_size"], "compute": runs[s][0]["compute"]} for s in sides},
        "ratio_vs_ours": speed, "ratio_vs_st": vs_st, "agreement": agree, "retrieval_kept": keeps,
        "contamination": bl.contamination([r for s in sides for r in runs[s]]),
        "runs": runs,
        "notes": {"timing": "wall time of the encode call on all documents after a 16-document warm-up in the "
                            "same process; loading, export and quantization excluded",
                  "agreement": f"vectors of the first repeat against {REFERENCE}'s fp32 vectors"},
    }


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"## Embedding levers, each against the configured `Embedder`{' (QUICK)' if report['quick'] else ''}", "",
             f"all-MiniLM-L6-v2, {c['docs']} synthetic KB documents, {c['repeats']} alternated repeats per side "
             f"(fresh process, warm-up call, then the timed call). Ratios per repeat against `ours` and against ST "
             f"defaults; agreement with ST's fp32 vectors. A lever keeps retrieval when top-10 overlap ≥ {GOAL_OVERLAP} "
             f"and every document's cosine ≥ {GOAL_COSINE}.", ""]
    rows = []
    for s, v in report["sides"].items():
        a = report["agreement"].get(s)
        rows.append([
            s, v["compute"], v["batch_size"], f"{v['docs_per_s']['median']:.0f} ({v['docs_per_s']['min']:.0f}–{v['docs_per_s']['max']:.0f})",
            bl.fmt_ratio(report["ratio_vs_ours"][s]) if s in report["ratio_vs_ours"] else "-",
            bl.fmt_ratio(report["ratio_vs_st"][s]) if s in report["ratio_vs_st"] else "-",
            f"{v['warmup_s']['median']:.1f}",
            f"{a['doc_cosine_mean']:.6f} / {a['doc_cosine_min']:.6f}" if a else "(reference)",
            f"{a['topk_overlap_mean']:.4f}" if a else "-",
            ("yes" if report["retrieval_kept"][s] else "**no**") if a else "-", bl.fmt_others(v["others_busy_cores"])])
    lines.append(bl.md_table(["side", "compute", "batch", "docs/s (min–max)", "vs ours", "vs ST", "warm-up s",
                              "cosine mean / min", "top-10 overlap", "retrieval kept", "others"], rows))
    for s, why in report["skipped"].items():
        lines.append(f"- {s} skipped: {why}")
    lines += bl.report_footer(report)
    return "\n".join(lines)


def headline(report: dict) -> list[list[str]]:
    """The fastest side that keeps retrieval, against `ours` (the embedder as configured)."""
    kept = [s for s, ok in report["retrieval_kept"].items() if ok and s != "ours"]
    if not kept:
        return [["fastest lever keeping retrieval", "none kept retrieval", "-", "-"]]
    best = max(kept, key=lambda s: report["ratio_vs_ours"][s]["median"])
    return [[f"fastest lever keeping retrieval: {best}, docs/s vs ours", bl.fmt_ratio(report["ratio_vs_ours"][best]),
             "-", "-"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bl.common_args(p, default_repeats=3)
    p.add_argument("--docs", type=int, default=None, help="documents (default 2000, quick 200)")
    p.add_argument("--queries", type=int, default=None, help="queries (default 200, quick 50)")
    bl.main(NAME, p.parse_args(), worker, run, markdown)


if __name__ == "__main__":
    sys.exit(main())
