"""Fingerprint of what a run writes, to check that a refactor changes no behaviour.

Runs `diffora run` on a tiny random BERT (gate search, normalized gates, the LoRA-drop default, a budget of
`auto`), `diffora search` alone, and `diffora run` on the embedded MiniLM (SST-2, 64 examples), plus the
Trainer search through the public API, and prints SHA-256 digests of the adapter bytes and of dam.json (its
selection, gates, norms and all candidate fields; the `info` and `config` blocks, which name paths and
versions, are left out). Only the command line and the public API are used, so the same script runs before
and after modules move.

    python dev/behaviour_fingerprint.py --out /tmp/before.json   # on the old commit
    python dev/behaviour_fingerprint.py --out /tmp/after.json    # on the new one
    diff /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "is",
    "not",
    "good",
    "bad",
    "very",
    "movie",
    "it",
    "was",
    "fun",
    "dull",
    "man",
    "woman",
    "said",
    "that",
    "yes",
    "no",
]
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "glue"


def tiny_bert_dir(folder: Path) -> Path:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True).save_pretrained(folder)
    return folder


def tiny_glue_dir(folder: Path) -> Path:
    rng = torch.Generator().manual_seed(0)

    def sentence(length: int = 6) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=rng))

    (folder / "RTE").mkdir(parents=True)
    for name, rows in (("train", 48), ("dev", 16)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        lines += [
            f"{i}\t{sentence()}\t{sentence(4)}\t{'entailment' if i % 2 else 'not_entailment'}"
            for i in range(rows)
        ]
        (folder / "RTE" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_run(out: Path) -> dict[str, str]:
    dam = json.loads((out / "dam.json").read_text())
    rows = [(c["name"], c["logit"], c["gate"], c["selected"]) for c in dam["candidates"]]
    adapter = out / "adapter_model.safetensors"
    return {
        "adapter_model.safetensors": sha(adapter.read_bytes()) if adapter.is_file() else "none (a search)",
        "search_weights.safetensors": sha((out / "search_weights.safetensors").read_bytes()),
        "dam selection (name, logit, gate, selected)": sha(json.dumps(rows).encode()),
        "dam candidates (all fields)": sha(json.dumps(dam["candidates"], sort_keys=True).encode()),
        "dam top level (no info, config)": sha(
            json.dumps(
                {k: v for k, v in dam.items() if k not in ("info", "config", "size_curve")}, sort_keys=True
            ).encode()
        ),
        "dam size curve (no seconds)": sha(
            json.dumps(
                {k: v for k, v in (dam.get("size_curve") or {}).items() if k != "seconds"}, sort_keys=True
            ).encode()
        ),
    }


def cli_run(name: str, root: Path, arguments: list[str], command_name: str = "run") -> dict[str, str]:
    out = root / "runs" / name
    command = [
        str(Path(sys.executable).parent / "diffora"),
        command_name,
        "--output-dir",
        str(out),
        *arguments,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return digest_run(out)


def trainer_search(model_dir: Path, root: Path) -> dict[str, str]:
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    import diffora

    def rows(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
        rng = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 64, (count, 6), generator=rng)
        labels = torch.randint(2, (count,), generator=rng)
        return [
            {"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": labels[i]}
            for i in range(count)
        ]

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=str(root / "trainer"),
        max_steps=5,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=True,
    )
    trainer = diffora.DiffoRASearchTrainer(
        model=diffora.prepare_search_model(
            model, lora_config=LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS")
        ),
        args=args,
        train_dataset=rows(16, 0),
        search_eval_dataset=rows(8, 1),
        diffora_config=diffora.SearchConfig(
            lora_drop=False, warmup_fraction=0.4, gate_lr=0.1, budget_weight=0.3
        ),
    )
    trainer.train()
    dam = trainer.dam()
    weights = trainer.search_weights()
    tensors = hashlib.sha256()
    for key in sorted(weights):
        tensors.update(key.encode())
        tensors.update(weights[key].detach().contiguous().numpy().tobytes())
    return {
        "gates and logits": sha(json.dumps([dam.gates, dam.logits]).encode()),
        "parameters": sha(json.dumps(dam.parameters).encode()),
        "update norms": sha(json.dumps(dam.update_norms).encode()),
        "search weights": tensors.hexdigest(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the digests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model, glue = tiny_bert_dir(root / "tiny-bert"), tiny_glue_dir(root / "glue")
        tiny = [
            "--task",
            "rte",
            "--data-dir",
            str(glue),
            "--model",
            str(model),
            "--rank",
            "2",
            "--max-length",
            "16",
            "--search-epochs",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--epochs",
            "1",
            "--seed",
            "0",
        ]
        results = {
            "gate search": cli_run(
                "gate", root, [*tiny, "--no-lora-drop", "--gate-lr", "0.05", "--log-every", "1"]
            ),
            "normalized gates": cli_run(
                "normalized",
                root,
                [
                    *tiny,
                    "--no-lora-drop",
                    "--gate-lr",
                    "0.05",
                    "--gate-form",
                    "normalized",
                    "--budget-weight",
                    "0.5",
                ],
            ),
            "LoRA-drop": cli_run("loradrop", root, tiny),
            "LoRA-drop, budget auto": cli_run("auto", root, [*tiny, "--budget", "auto"]),
            "search only, budget 0.25x": cli_run("search", root, [*tiny, "--budget", "0.25x"], "search"),
            "MiniLM sst2": cli_run(
                "minilm",
                root,
                [
                    "--task",
                    "sst2",
                    "--data-dir",
                    str(DATA),
                    "--max-train-samples",
                    "64",
                    "--max-eval-samples",
                    "32",
                    "--search-epochs",
                    "0.5",
                    "--epochs",
                    "1",
                    "--seed",
                    "0",
                ],
            ),
            "Trainer search": trainer_search(model, root),
        }
    text = json.dumps(results, indent=1)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
