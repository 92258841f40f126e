"""The recipe grid of the fine-tuning arms on the development world (data seed 99).

Each recipe is one matched cell (`python -m updatelab.run`) of experiment `fair_contest_dev`;
evaluation seeds (0, 1, 2) are never run here. Cells whose results exist are skipped, so the
script can be re-run to finish a grid. Usage:

    .venv/bin/python experiments/fair_contest/grid.py [recipe ...]   # default: every recipe
    .venv/bin/python -m updatelab.report.table --experiment fair_contest_dev
"""

from __future__ import annotations

import subprocess
import sys

COMMON = ["seed=99", "name=fair_contest_dev"]
LORA = ["strategy=lora", "strategy.replay_ratio=0"]
RECIPES: dict[str, list[str]] = {
    # closed-book LoRA
    "qa": [*LORA, "strategy.docs=false"],
    "qa+replay": [*LORA, "strategy.docs=false", "strategy.replay_ratio=0.5"],
    "qa+docs+replay": [*LORA, "strategy.replay_ratio=0.5"],
    "pit+replay": [*LORA, "strategy.replay_ratio=0.5", "strategy.order=qa_then_docs"],
    "docs_then_qa+replay": [*LORA, "strategy.replay_ratio=0.5", "strategy.order=docs_then_qa"],
    "qa+replay lr1e-3": [*LORA, "strategy.docs=false", "strategy.replay_ratio=0.5", "adapter.lr=1e-3"],
    "qa+replay.25 lr1e-3 bs8 4ep": [*LORA, "strategy.docs=false", "strategy.replay_ratio=0.25", "adapter.lr=1e-3",
                                    "adapter.batch_size=8", "adapter.epochs=4", "adapter.patience=2"],
    "qa+replay.25 lr1e-3 6ep": [*LORA, "strategy.docs=false", "strategy.replay_ratio=0.25", "adapter.lr=1e-3",
                                "adapter.epochs=6", "adapter.patience=2"],
    # fewer training tokens for the CPU budget of `make run` (higher lr, fewer epochs / wordings)
    "qa+replay.25 lr2e-3 3ep": [*LORA, "strategy.docs=false", "strategy.replay_ratio=0.25", "adapter.lr=2e-3",
                                "adapter.epochs=3", "adapter.patience=2"],
    "qa2+replay.25 lr2e-3 4ep": [*LORA, "strategy.docs=false", "strategy.replay_ratio=0.25", "strategy.qa_per_fact=2",
                                 "adapter.lr=2e-3", "adapter.epochs=4", "adapter.patience=2"],
    # LoRA answering with retrieval
    "rag qa+replay": ["strategy=lora_rag", "strategy.docs=false", "strategy.raft=false", "strategy.replay_ratio=0.5"],
    "rag raft+replay": ["strategy=lora_rag", "strategy.docs=false", "strategy.raft=true", "strategy.replay_ratio=0.5"],
    "rag raft qa1 replay.25 lr1e-3 3ep": ["strategy=lora_rag", "strategy.docs=false", "strategy.raft=true",
                                          "strategy.qa_per_fact=1", "strategy.replay_ratio=0.25", "adapter.lr=1e-3",
                                          "adapter.epochs=3", "adapter.patience=2"],
    "rag raft qa1 replay.25 lr2e-3 2ep": ["strategy=lora_rag", "strategy.docs=false", "strategy.raft=true",
                                          "strategy.qa_per_fact=1", "strategy.replay_ratio=0.25", "adapter.lr=2e-3",
                                          "strategy.adapter_overrides.epochs=2", "adapter.patience=2"],
    # the reference arms on the same world
    "closed_book": ["strategy=closed_book"],
    "reembed": ["strategy=reembed"],
    "full_ft qa+replay": ["strategy=full_ft", "strategy.docs=false", "strategy.replay_ratio=0.5"],
}


def main(names: list[str]) -> int:
    for name in names or list(RECIPES):
        cmd = [sys.executable, "-m", "updatelab.run", *COMMON, *RECIPES[name], "progress=false"]
        print(f"== {name}: {' '.join(cmd[3:])}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"== {name} failed with exit status {rc}", flush=True)
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
