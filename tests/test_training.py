"""updatelab.training: LoRA fine-tuning with PEFT in Lightning, on a tiny offline Llama."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")
pytest.importorskip("peft")

from pytorch_lightning.loggers import Logger  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from updatelab.training.datamodule import (  # noqa: E402
    IGNORE_INDEX,
    LoraDataModule,
    padding_fraction,
    random_batches,
    tokenize_examples,
)
from updatelab.training.examples import TrainExample, TrainStats  # noqa: E402
from updatelab.training.train import train_lora  # noqa: E402

WORDS = (
    "the capital of france is paris italy rome spain madrid water boils at one hundred degrees who "
    "president club alice joined company in twenty bob leads research team now answer what user assistant"
).split()
SENTENCES = [
    "the capital of france is paris",
    "the capital of italy is rome",
    "water boils at one hundred degrees",
    "madrid is the capital of spain",
    "alice joined the company in twenty twenty",
    "bob leads the research team now",
    "who is the president of the club",
    "the answer is paris",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant : {% endif %}"
)
ADAPTER = {"r": 4, "alpha": 8, "dropout": 0.05, "lr": 1e-2, "batch_size": 4, "max_length": 64, "warmup_ratio": 0.1}
TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed", "enable_progress_bar": False}


def make_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"]))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    t = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    t.chat_template = CHAT_TEMPLATE
    return t


def make_model(tok, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def qa(tok, question: str, answer: str) -> TrainExample:
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return TrainExample(prompt=prompt, completion=answer + " " + tok.eos_token, add_eos=False)


def make_examples(tok) -> list[TrainExample]:
    docs = [TrainExample("", s) for s in SENTENCES]
    return docs + [qa(tok, "what is the capital of spain", "madrid"), qa(tok, "who leads the research team", "bob")]


def run(tok, model, out_dir, adapter=None, trainer=None, seed=0, **kw):
    return train_lora(
        model, tok, make_examples(tok), {**ADAPTER, **(adapter or {})}, {**TRAINER, **(trainer or {})},
        out_dir=out_dir, seed=seed, progress=False, **kw,
    )


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from threads, and on a shared, loaded machine OpenMP barriers
    # made each op ~100x slower (9 steps: 9 s with 2 threads vs 0.3 s with 1).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


class StepRecorder(pl.Callback):
    def __init__(self, stop_at: int | None = None):
        self.steps: list[int] = []
        self.batches: list[list[int]] = []
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            raise KeyError("simulated preemption")  # not KeyboardInterrupt: Lightning turns it into sys.exit(1)
        self.steps.append(trainer.global_step)
        self.batches.append(batch["input_ids"][batch["attention_mask"].bool()].tolist())
        self.all_training = getattr(self, "all_training", True) and all(m.training for m in pl_module.modules())


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[int | None, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


# ------------------------------------------------------------------------------------------------


def test_one_step_changes_only_adapter_weights(tok, tmp_path):
    model = make_model(tok)
    params = dict(model.named_parameters())  # the same Parameter objects live on inside the PeftModel
    before = {n: p.detach().clone() for n, p in params.items()}
    assert not model.training  # as `load_lm` hands it over
    rec = StepRecorder()
    peft_model, stats = run(tok, model, tmp_path, adapter={"max_steps": 1}, trainer={"callbacks": [rec]})
    assert stats.steps == 1 and len(stats.loss_curve) == 1
    assert rec.all_training  # LoRA dropout active while training ...
    assert not any(m.training for m in peft_model.modules())  # ... and eval mode on return

    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    # B starts at zero and moves at step 1 (A's gradient is zero while B == 0).
    changed_b = [n for n, p in lora.items() if "lora_B" in n and p.abs().sum() > 0]
    assert len(changed_b) == sum("lora_B" in n for n in lora)
    others = [(n, p) for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert len(others) == len(params)
    assert not any(p.requires_grad for _, p in others)
    for n, p in params.items():
        assert torch.equal(p.detach(), before[n]), f"base parameter {n} changed"


def test_base_weights_identical_after_training_and_unload_restores_model(tok, tmp_path):
    model = make_model(tok)
    ids = torch.tensor([tok("the capital of spain is madrid")["input_ids"]])
    with torch.no_grad():
        ref_logits = model(input_ids=ids).logits.clone()
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    peft_model, stats = run(tok, model, tmp_path, adapter={"epochs": 3})
    assert stats.steps == 3 * 3 and stats.epochs == pytest.approx(3.0)
    assert not peft_model.training

    base = peft_model.get_base_model()
    with torch.no_grad():
        tuned_logits = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            off_logits = peft_model(input_ids=ids).logits
    assert not torch.equal(tuned_logits, ref_logits)  # the adapter does something
    assert torch.equal(off_logits, ref_logits)

    base_params = {n.replace(".base_layer", ""): p for n, p in base.named_parameters() if "lora_" not in n}
    assert set(base_params) == set(n for n, _ in make_model(tok).named_parameters())
    for n, p in base_params.items():
        assert torch.equal(p.detach(), ref_state[n]), n

    unloaded = peft_model.unload()
    assert not any("lora_" in k for k in unloaded.state_dict())
    for k, v in unloaded.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    with torch.no_grad():
        assert torch.equal(unloaded(input_ids=ids).logits, ref_logits)


def test_prompt_masked_and_only_completion_tokens_trained(tok, tmp_path):
    prompt_ex = qa(tok, "what is the capital of spain", "madrid")
    doc_ex = TrainExample("", "the capital of france is paris")
    items, counts = tokenize_examples(tok, [prompt_ex, doc_ex], max_length=64)
    assert counts == {"truncated": 0, "dropped": 0}

    p_ids = tok(prompt_ex.prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(prompt_ex.completion, add_special_tokens=False)["input_ids"]
    assert items[0].input_ids.tolist() == p_ids + c_ids
    assert items[0].labels.tolist() == [IGNORE_INDEX] * len(p_ids) + c_ids
    assert c_ids[-1] == tok.eos_token_id  # add_eos=False: no second EOS
    assert items[0].trained_tokens == len(c_ids)

    d_ids = tok(doc_ex.completion, add_special_tokens=False)["input_ids"]
    assert items[1].input_ids.tolist() == d_ids + [tok.eos_token_id]  # documents get EOS
    assert items[1].labels.tolist() == d_ids + [tok.eos_token_id]
    assert items[1].trained_tokens == len(d_ids)  # position 0 has no prediction

    # A tokenizer that adds BOS by default gets BOS in front of documents (masked context).
    bos_tok = make_tokenizer(add_bos=True)
    (bos_item,), _ = tokenize_examples(bos_tok, [doc_ex], max_length=64)
    assert bos_item.input_ids[0] == bos_tok.bos_token_id and bos_item.labels[0] == IGNORE_INDEX
    assert bos_item.trained_tokens == len(d_ids) + 1

    # Truncation, and prompts that leave no completion token are dropped.
    long_prompt = TrainExample("the " * 20, "paris")
    items, counts = tokenize_examples(tok, [doc_ex, long_prompt], max_length=5)
    assert counts == {"truncated": 2, "dropped": 1} and len(items) == 1 and items[0].length == 5

    # One epoch of training counts exactly these tokens.
    examples = [prompt_ex, doc_ex]
    items, _ = tokenize_examples(tok, examples, max_length=64)
    _, stats = train_lora(
        make_model(tok), tok, examples, {**ADAPTER, "epochs": 1, "batch_size": 2}, TRAINER, tmp_path, seed=0, progress=False
    )
    assert stats.steps == 1
    assert stats.tokens == sum(it.length for it in items)
    assert stats.trained_tokens == sum(it.trained_tokens for it in items) == len(c_ids) + len(d_ids)


def test_length_bucketing_batches_similar_lengths(tok):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 60, (96,), generator=g).tolist()
    examples = [TrainExample("", " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))) for i, n in enumerate(lengths)]
    dm = LoraDataModule(tok, examples, batch_size=8, max_length=128, seed=0)
    dm.setup("fit")
    true_lengths = dm.lengths

    seen, widths = [], []
    for batch in dm.train_dataloader():
        real = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(real.max())  # padded to the batch's own max
        assert (batch["attention_mask"][:, 0] == 1).all()  # right padding
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
        widths.append(int(real.max() - real.min()))
        seen += real.tolist()
    assert sorted(seen) == sorted(true_lengths)  # every sequence once per epoch
    assert max(widths) <= 8  # batches hold similar lengths

    bucketed = dm.padding_fraction
    shuffled = padding_fraction(random_batches(len(true_lengths), 8, seed=0), true_lengths)
    assert bucketed < 0.1 and shuffled > 0.3 and bucketed < shuffled / 4, (bucketed, shuffled)

    # Batch order is reshuffled per epoch (seeded), batch contents stay the buckets.
    s = dm.order_sampler
    assert s.epoch_order(0) != s.epoch_order(1)
    assert sorted(s.epoch_order(0)) == sorted(s.epoch_order(1)) == list(range(len(dm.buckets)))
    assert LoraDataModule(tok, examples, batch_size=8, max_length=128, seed=0).buckets == dm.buckets


def test_resume_continues_from_checkpoint_with_adapter_only_tensors(tok, tmp_path):
    rec1 = StepRecorder()
    _, s1 = run(tok, make_model(tok), tmp_path, adapter={"max_steps": 4}, trainer={"checkpoint_every_n_steps": 2, "callbacks": [rec1]})
    assert rec1.steps == [0, 1, 2, 3] and s1.steps == 4
    ckpt_file = tmp_path / "checkpoints" / "last.ckpt"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]
    ckpt = torch.load(ckpt_file, weights_only=True)
    assert ckpt["global_step"] == 4

    rec2 = StepRecorder()
    peft_model, s2 = run(tok, make_model(tok), tmp_path, adapter={"max_steps": 6}, trainer={"checkpoint_every_n_steps": 2, "callbacks": [rec2]})
    assert rec2.steps == [4, 5]  # started at step 4, not 0
    fresh = StepRecorder()
    run(tok, make_model(tok), tmp_path / "fresh", adapter={"max_steps": 6}, trainer={"callbacks": [fresh]})
    assert rec2.batches == fresh.batches[4:]  # and with the batches that follow step 4
    assert s2.resumed_from_step == 4 and s2.steps == 6 and len(s2.loss_curve) == 6
    assert s2.loss_curve[:4] == s1.loss_curve

    ckpt = torch.load(ckpt_file, weights_only=True)
    assert ckpt["global_step"] == 6
    sd = ckpt["state_dict"]
    assert sd and all("lora_" in k for k in sd)  # no base weights
    assert sum(v.numel() for v in sd.values()) == s2.trainable_params
    n_adapter_bytes = 4 * s2.trainable_params
    base_bytes = 4 * (s2.total_params - s2.trainable_params)
    # adapter + two AdamW moments + small loop state; the base would not fit in this budget
    assert ckpt_file.stat().st_size < 3 * n_adapter_bytes + base_bytes // 2
    assert ckpt_file.stat().st_size < 3 * n_adapter_bytes + 64_000


@pytest.mark.parametrize("every,stop_at", [(4, 6), (3, 7)], ids=["mid-epoch-ckpt", "epoch-end-ckpt"])
def test_interrupted_run_resumes_exactly(tok, tmp_path, every, stop_at):
    # 10 sequences, batch 2, 2 accumulated micro-batches: 5 batches and 3 steps (the last one
    # partial) per epoch; 9 steps. Checkpoint at 4 lies mid-epoch, at 6 on an epoch's last batch.
    common = {"adapter": {"epochs": 3, "batch_size": 2}, "trainer": {"checkpoint_every_n_steps": every, "accumulate_grad_batches": 2}}
    full_rec = StepRecorder()
    _, full = run(tok, make_model(tok), tmp_path / "full", adapter=common["adapter"], trainer={**common["trainer"], "callbacks": [full_rec]})
    assert full.steps == 9
    cut_rec = StepRecorder(stop_at=stop_at)
    with pytest.raises(KeyError):
        run(tok, make_model(tok), tmp_path / "cut", adapter=common["adapter"], trainer={**common["trainer"], "callbacks": [cut_rec]})
    resumed_rec = StepRecorder()
    resumed_model, resumed = run(tok, make_model(tok), tmp_path / "cut", adapter=common["adapter"], trainer={**common["trainer"], "callbacks": [resumed_rec]})
    last_ckpt = stop_at // every * every
    assert resumed.resumed_from_step == last_ckpt and resumed.steps == full.steps

    # The resumed run sees exactly the batches the uninterrupted run saw after that step ...
    done = 2 * last_ckpt - last_ckpt // 3  # micro-batches before the checkpoint (3 steps = 5 batches)
    assert resumed_rec.batches == full_rec.batches[done:]
    # ... with the same RNG (dropout) and optimizer state: bit-identical losses and adapter.
    assert resumed.loss_curve == full.loss_curve
    assert resumed.tokens == full.tokens and resumed.trained_tokens == full.trained_tokens
    from safetensors.torch import load_file

    a = load_file(str(Path(full.adapter_path) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed.adapter_path) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Calling again on a finished out_dir returns at once with the same adapter.
    trained = lora_state(resumed_model)
    again_model, again = run(tok, make_model(tok), tmp_path / "cut", **common)
    assert again.resumed_from_step == again.steps == full.steps and again.loss_curve == full.loss_curve
    assert again.tokens == full.tokens and again.wall_s > 0 and again.tokens_per_s > 0  # whole-run cost
    assert all(torch.equal(p, trained[n]) for n, p in lora_state(again_model).items())


def test_refuses_checkpoint_of_a_different_run(tok, tmp_path):
    run(tok, make_model(tok), tmp_path, adapter={"max_steps": 2})
    with pytest.raises(ValueError, match="different run"):
        run(tok, make_model(tok), tmp_path, adapter={"max_steps": 4}, seed=1)


def test_adapter_saved_as_safetensors_with_size(tok, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    peft_model, stats = run(tok, make_model(tok), tmp_path, adapter={"epochs": 2})
    path = Path(stats.adapter_path)
    assert path == tmp_path / "adapter"
    weights = path / "adapter_model.safetensors"
    assert weights.exists() and not (path / "adapter_model.bin").exists()
    assert stats.adapter_bytes == weights.stat().st_size > 0
    tensors = load_file(str(weights))
    assert tensors and all("lora_" in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == stats.trainable_params
    assert json.loads((path / "adapter_config.json").read_text())["r"] == ADAPTER["r"]

    # Reloading onto a fresh copy of the base gives the same model.
    ids = torch.tensor([tok("the capital of spain is madrid")["input_ids"]])
    reloaded = PeftModel.from_pretrained(make_model(tok), str(path)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, peft_model(input_ids=ids).logits)


def test_stats_logging_and_determinism(tok, tmp_path):
    logger = MemoryLogger()
    _, a = run(tok, make_model(tok), tmp_path / "a", adapter={"epochs": 2}, logger=logger)
    _, b = run(tok, make_model(tok), tmp_path / "b", adapter={"epochs": 2})
    assert isinstance(a, TrainStats)
    assert a.loss_curve == b.loss_curve and a.steps == 6 and len(a.loss_curve) == 6
    assert a.tokens > a.trained_tokens > 0 and a.tokens_per_s > 0 and a.wall_s > 0
    assert a.final_loss == pytest.approx(sum(a.loss_curve) / len(a.loss_curve))
    assert 0 < a.trainable_params < a.total_params
    assert a.padding_fraction < 0.5
    keys = [set(m) for _, m in logger.metrics]
    assert sum("train/loss" in k for k in keys) == a.steps
    assert sum("train/lr" in k for k in keys) == a.steps
    assert any("train/tokens_per_s" in k for k in keys)
    json.dumps(a.to_dict())  # what the strategy stores


def test_all_linear_targets_and_constant_schedule(tok, tmp_path):
    peft_model, stats = run(tok, make_model(tok), tmp_path, adapter={"max_steps": 2, "target_modules": "all-linear", "scheduler": "constant"})
    wrapped = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert stats.steps == 2


def test_labelled_positions_loss_equals_the_hf_causal_lm_loss(tok):
    from updatelab.training.loss import labelled_positions_loss

    model = make_model(tok)
    data = LoraDataModule(tok, make_examples(tok), batch_size=10, max_length=64, seed=0)
    batch = data.collator(data.items)  # prompt-masked QA rows and padded rows in one batch
    assert (batch["labels"] == IGNORE_INDEX).any() and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        ours = labelled_positions_loss(model, batch)
        hf = model(**batch, use_cache=False).loss
    torch.testing.assert_close(ours, hf, rtol=1e-6, atol=1e-6)


def _qa_batch(tok):
    """QA rows with the same chat-template start (and one row padded): a prefix to share."""
    data = LoraDataModule(tok, [qa(tok, "what is the capital of spain", "madrid"), qa(tok, "what is the answer", "paris"),
                                qa(tok, "what is the capital of france now", "paris")], batch_size=3, max_length=64, seed=0)
    return data.collator(data.items)


def test_the_shared_prefix_is_the_unpadded_unlabelled_start_of_every_row(tok):
    from updatelab.training.loss import shared_prefix_length

    batch = _qa_batch(tok)
    prefix = shared_prefix_length(batch)
    common = tok("<bos> user : what is the", add_special_tokens=False)["input_ids"]  # what the three questions share
    assert prefix == len(common)
    ids = batch["input_ids"]
    assert (ids[:, :prefix] == ids[:1, :prefix]).all() and not (ids[:, prefix] == ids[0, prefix]).all()
    labelled = dict(batch, labels=batch["labels"].clone())
    labelled["labels"][1, 3] = ids[1, 3]  # a target inside the prefix: only the positions before it are shared
    assert shared_prefix_length(labelled) == 0  # 2 < MIN_SHARED_PREFIX
    one_row = {k: v[:1] for k, v in batch.items()}
    assert shared_prefix_length(one_row) == 0


def _nontrivial_lora(tok):
    """A LoRA model in training mode whose adapter path is not zero (LoRA B starts at zero)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_model(tok), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model.train()


def test_a_shared_prefix_gives_the_hf_loss_and_the_same_gradients(tok):
    from updatelab.training.loss import labelled_positions_loss, shared_prefix_length

    batch = _qa_batch(tok)
    assert shared_prefix_length(batch) > 0
    model = _nontrivial_lora(tok)
    grads = []
    for share in (True, False):
        model.zero_grad()
        loss = labelled_positions_loss(model, batch, prefix=None if share else 0)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        if share:
            shared_loss = loss.detach()
    with torch.no_grad():
        hf = model(**batch, use_cache=False).loss
    torch.testing.assert_close(shared_loss, hf, rtol=1e-5, atol=1e-6)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_a_training_counts_the_shared_prefix_once_in_its_computed_tokens(tok, tmp_path):
    from updatelab.training.loss import shared_prefix_length

    examples = [qa(tok, "what is the capital of spain", "madrid"), qa(tok, "what is the answer", "paris"),
                qa(tok, "what is the capital of france now", "paris")]
    prefix = shared_prefix_length(_qa_batch(tok))
    for dropout, shared in ((0.0, prefix * 2), (0.05, 0)):  # dropout: each row draws its own masks, nothing shared
        _, stats = train_lora(make_model(tok), tok, examples, {**ADAPTER, "batch_size": 3, "max_steps": 1, "dropout": dropout},
                              TRAINER, out_dir=tmp_path / str(dropout), seed=0, progress=False)
        assert stats.computed_tokens == stats.tokens - shared


def test_training_attention_kernel_is_restored_for_generation(tok, tmp_path):
    model = make_model(tok)
    before = model.config._attn_implementation
    peft_model, _ = run(tok, model, tmp_path, adapter={"max_steps": 1}, trainer={"attn_implementation": "eager"})
    assert before != "eager"
    assert peft_model.get_base_model().config._attn_implementation == before


def test_a_redirected_log_gets_progress_lines_up_to_the_last_step(tok, tmp_path, caplog):
    # Under pytest stdout is not a terminal, as in `make run > log`: Lightning's bar would be invisible.
    with caplog.at_level(logging.INFO, logger="updatelab.training"):
        _, stats = train_lora(make_model(tok), tok, make_examples(tok), {**ADAPTER, "max_steps": 5}, TRAINER,
                              out_dir=tmp_path, seed=0, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train step")]
    assert lines and lines[-1].startswith(f"train step {stats.steps}/{stats.steps} ")
    assert "tok/s" in lines[-1] and "left" in lines[-1]


# -- stages, dev-split selection, full fine-tuning ------------------------------------------------

def test_a_staged_run_trains_every_stage_for_its_epochs_in_order(tok, tmp_path):
    docs = [TrainExample("", s, stage=0) for s in SENTENCES[:4]]
    qas = [TrainExample(e.prompt, e.completion, e.add_eos, stage=1) for e in make_examples(tok)[-2:]] * 2
    dm = LoraDataModule(tok, docs + qas, batch_size=2, max_length=64, seed=0, epochs=3)
    assert dm.staged
    stage_of = [it.stage for it in dm.items]
    order = [stage_of[b[0]] for b in dm.buckets]
    assert order == sorted(order)  # every stage-0 batch before any stage-1 batch
    assert order.count(0) == 3 * 2 and order.count(1) == 3 * 2  # 4 items per stage, batch 2, 3 epochs
    rec = StepRecorder()
    _, stats = train_lora(make_model(tok), tok, docs + qas, {**ADAPTER, "epochs": 3, "batch_size": 2}, {**TRAINER, "callbacks": [rec]},
                          out_dir=tmp_path, seed=0, progress=False)
    assert stats.steps == 12 and stats.epochs == pytest.approx(3.0)


class ScriptedScores:
    """A dev scorer that returns the given scores in turn and remembers the weights it saw."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, model):
        self.seen.append(lora_state(model))
        return self.scores.pop(0)


def test_best_dev_selection_returns_the_weights_of_the_best_scored_step(tok, tmp_path):
    scorer = ScriptedScores([0.0, 0.2, 0.9, 0.4, 0.1])  # steps 0 (base), 1, 2, 3, 4
    model, stats = run(tok, make_model(tok), tmp_path, adapter={"max_steps": 4, "select": "best_dev", "dev_every_steps": 1},
                       dev_score=scorer)
    assert stats.dev["history"] == [[0, 0.0], [1, 0.2], [2, 0.9], [3, 0.4], [4, 0.1]]
    assert stats.selected_step == 2 and stats.steps == 4
    final = lora_state(model)
    assert all(torch.equal(final[k], scorer.seen[2][k]) for k in final)  # the step-2 weights, not step 4's


def test_patience_stops_training_early_and_a_rerun_does_not_train_on(tok, tmp_path):
    scorer = ScriptedScores([0.0, 0.5, 0.4, 0.3] + [0.0] * 10)
    _, stats = run(tok, make_model(tok), tmp_path, adapter={"max_steps": 9, "select": "best_dev", "dev_every_steps": 1,
                                                           "patience": 2}, dev_score=scorer)
    assert stats.steps == 3 and stats.dev["stopped_early"] and stats.selected_step == 1
    again = ScriptedScores([0.0] * 10)
    _, rerun = run(tok, make_model(tok), tmp_path, adapter={"max_steps": 9, "select": "best_dev", "dev_every_steps": 1,
                                                           "patience": 2}, dev_score=again)
    assert rerun.steps == 3 and rerun.selected_step == 1


def test_best_dev_without_a_dev_split_is_refused(tok, tmp_path):
    with pytest.raises(ValueError, match="dev"):
        run(tok, make_model(tok), tmp_path, adapter={"max_steps": 2, "select": "best_dev"})


def test_full_fine_tuning_trains_every_weight_and_saves_the_whole_model(tok, tmp_path):
    model = make_model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned, stats = run(tok, model, tmp_path, adapter={"method": "full", "max_steps": 3, "lr": 1e-3})
    assert tuned is model and not hasattr(tuned, "peft_config")
    assert stats.trainable_params == stats.total_params == sum(p.numel() for p in model.parameters())
    moved = [n for n, p in tuned.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
    assert (tmp_path / "model" / "model.safetensors").exists() and stats.method == "full"


def test_replay_examples_are_the_base_models_own_answers_cached_once(tok, tmp_path):
    from types import SimpleNamespace

    from updatelab.models.lm import PromptBuilder
    from updatelab.training import replay

    builder = PromptBuilder(system="", rag_user="{context} {question}", closed_user="{question}")
    eval_cfg = SimpleNamespace(max_new_tokens=3, batch_size=8, autocast="float32")
    model = make_model(tok)
    first, cached = replay.rehearsal_examples(model, tok, builder, eval_cfg, tmp_path, model_key="tiny")
    assert not cached and first
    prompts = [builder.render(tok, q, None) for q in replay.replay_prompts()]
    assert {e.prompt for e in first} <= set(prompts) and all(e.completion.endswith(tok.eos_token) for e in first)
    again, cached = replay.rehearsal_examples(make_model(tok, seed=1), tok, builder, eval_cfg, tmp_path, model_key="tiny")
    assert cached and again == first  # answered once per (model, prompts): another seed's model is not asked
    with_passages, _ = replay.rehearsal_examples(model, tok, builder, eval_cfg, tmp_path, model_key="tiny",
                                                passages_for=lambda qs: [["alice joined"] for _ in qs])
    assert all("alice joined" in e.prompt for e in with_passages)


def test_a_training_in_a_redirected_log_writes_lines_and_no_progress_bar(tmp_path, monkeypatch, caplog):
    import pytorch_lightning as pl

    bars, init = [], pl.Trainer.__init__

    def recording_init(self, *args, **kwargs):
        bars.append(kwargs.get("enable_progress_bar"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", recording_init)
    tok = make_tokenizer()
    with caplog.at_level(logging.INFO):
        train_lora(make_model(tok), tok, make_examples(tok), {**ADAPTER, "max_steps": 4},
                   {**TRAINER, "enable_progress_bar": True}, out_dir=tmp_path, seed=0,
                   progress=True)  # under pytest stdout is no terminal
    assert bars == [False]  # the bar would leave its last frame in the log
    assert "train step 4/4" in caplog.text


# -- frozen weights in bf16 under bf16-mixed ---------------------------------------------------------


class FrozenDtypes(pl.Callback):
    """The dtypes of the adapted layers' frozen weights at every training step."""

    def __init__(self):
        self.seen: set[torch.dtype] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen |= {m.base_layer.weight.dtype for m in pl_module.modules() if hasattr(m, "lora_A")}


def test_under_bf16_mixed_the_frozen_weights_train_in_bf16_and_the_same_fp32_tensors_come_back(tok, tmp_path):
    model = make_model(tok)
    before = {n: p for n, p in model.named_parameters()}
    rec = FrozenDtypes()
    peft_model, _ = run(tok, model, tmp_path, adapter={"max_steps": 2}, trainer={"callbacks": [rec]})
    assert rec.seen == {torch.bfloat16}
    after = {n.replace(".base_layer", ""): p for n, p in peft_model.get_base_model().named_parameters() if "lora_" not in n}
    assert all(after[n] is p and p.dtype == torch.float32 for n, p in before.items())


def test_under_32_true_the_frozen_weights_stay_fp32(tok, tmp_path):
    rec = FrozenDtypes()
    run(tok, make_model(tok), tmp_path, adapter={"max_steps": 1}, trainer={"precision": "32-true", "callbacks": [rec]})
    assert rec.seen == {torch.float32}


def test_the_dev_scorer_sees_the_fp32_frozen_weights(tok, tmp_path):
    dtypes = []

    def score(model):
        dtypes.extend(m.base_layer.weight.dtype for m in model.modules() if hasattr(m, "lora_A"))
        return 0.0

    run(tok, make_model(tok), tmp_path, adapter={"max_steps": 2, "dev_every_steps": 1}, dev_score=score)
    assert dtypes and set(dtypes) == {torch.float32}


def test_bf16_frozen_weights_give_autocasts_loss_and_gradients(tok):
    from updatelab.training.frozen_weights import frozen_weights_in
    from updatelab.training.loss import labelled_positions_loss

    batch = _qa_batch(tok)
    model = _nontrivial_lora(tok)
    out = []
    for held in (False, True):
        model.zero_grad()
        with frozen_weights_in(model, enabled=held) as cast, torch.autocast("cpu", dtype=torch.bfloat16):
            assert held == (cast is not None and len(cast) == 2 * 7)  # 2 layers x 7 linear kinds
            loss = labelled_positions_loss(model, batch)
            loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-3, atol=1e-4)
    for n in out[0][1]:
        torch.testing.assert_close(out[0][1][n], out[1][1][n], rtol=1e-2, atol=1e-3, msg=n)
