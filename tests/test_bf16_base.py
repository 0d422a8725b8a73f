"""Mixed precision bf16: a bf16 frozen base, fp32 trained weights, and the adapter format of an fp32 run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from conftest import random_batch
from diffora.app import pipeline
from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig
from diffora.method import search as search_loop
from diffora.method.lora import wrap_with_lora
from diffora.tasks.batching import make_dataloader
from diffora.tasks.data import load_task_data
from diffora.tasks.models import base_dtype, default_heads, load_classifier, load_tokenizer
from diffora.tasks.registry import get_task_spec
from diffora.training.distributed import make_accelerator
from diffora.training.loop import fit, predict

# The tiny gate search of the PEFT round trip, one seed; fp32 and bf16 differ only in `mixed_precision`.
SEED = 0
# Seed noise, measured FIRST with this configuration in fp32 on the tiny RTE task (seeds 0, 1, 2):
# - accuracy: 0.5 for every seed (the random tiny task cannot be learned; each run predicts one class), a
#   spread of 0.0: the tolerance is the metric's resolution, one of the 16 eval examples;
# - final train loss: 0.6865, 0.6744, 0.6910, a spread (largest pairwise difference) of 0.0166;
# - kept set (6 of 12 modules): Jaccard 0.714, 0.333 and 0.5 between the seeds, the lowest 0.333.
# bf16 against fp32 on the same seed, measured next: accuracy equal, losses at most 0.0015 apart, Jaccard 1.
METRIC_TOLERANCE = 1 / 16
LOSS_TOLERANCE = 0.0166
JACCARD_FLOOR = 0.333


def _configs(tiny_bert_dir: Path, tiny_glue_dir: Path, precision: str):
    return (
        DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16),
        AdapterConfig(model=str(tiny_bert_dir), rank=2, pooler="auto"),  # the pooler trains: fp32 too
        SearchConfig(
            lora_drop=False,
            epochs=2,
            batch_size=8,
            lr=1e-2,
            gate_lr=0.05,
            seed=SEED,
            mixed_precision=precision,
        ),
        FinetuneConfig(epochs=2, batch_size=8, lr=1e-2, seed=SEED, mixed_precision=precision),
    )


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tiny_glue_dir, tmp_path_factory) -> dict:
    """An fp32 and a bf16 `run`, and a bf16 `finetune` of the fp32 run's search (the same kept modules)."""
    folder = tmp_path_factory.mktemp("bf16")
    seen: dict = {"gates": []}

    class RecordedGates(search_loop.DAMGates):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen["gates"].append(self)

    def record_search(outcome, *args, **kwargs):
        seen["search"] = {name: p.dtype for name, p in outcome.peft_model.named_parameters()}
        seen["trainable"] = {n for n, p in outcome.peft_model.named_parameters() if p.requires_grad}
        return original(outcome, *args, **kwargs)

    original = pipeline.write_search_artifacts
    fp32 = _configs(tiny_bert_dir, tiny_glue_dir, "no")
    results = {"fp32": pipeline.run(*fp32, output_dir=folder / "fp32")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_loop, "DAMGates", RecordedGates)
        patch.setattr(pipeline, "write_search_artifacts", record_search)
        configs = _configs(tiny_bert_dir, tiny_glue_dir, "bf16")
        results["bf16"] = pipeline.run(*configs, output_dir=folder / "bf16")
    results["finetune_bf16"] = pipeline.finetune(
        folder / "fp32" / "dam.json", configs[3], output_dir=folder / "finetune-bf16"
    )
    return {**results, "seen": seen, "folder": folder}


def _tensor_dtypes(path: Path) -> dict[str, torch.dtype]:
    return {key: tensor.dtype for key, tensor in load_file(str(path)).items()}


def test_base_dtype_is_bf16_only_when_every_stage_runs_in_bf16(monkeypatch) -> None:
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert base_dtype("bf16") is torch.bfloat16 and base_dtype("bf16", "bf16") is torch.bfloat16
    assert base_dtype("no") is None and base_dtype("bf16", "no") is None and base_dtype("fp16") is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP flattens one dtype per flat parameter
    assert base_dtype("bf16", "bf16") is None


def test_bf16_base_weights_and_fp32_trained_weights_in_search_and_finetune(runs) -> None:
    model = runs["bf16"].model
    linear = [m for n, m in model.named_modules() if n.endswith("attention.self.query.base_layer")]
    assert linear and all(m.weight.dtype == torch.bfloat16 for m in linear)
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert any("bert.pooler.modules_to_save" in n for n in trainable)  # the untrained pooler trains
    assert any("lora_A" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    blocks = {p.dtype for n, p in model.named_parameters() if "encoder.layer" in n and "lora_" not in n}
    assert blocks == {torch.bfloat16}
    seen = runs["seen"]  # the search model at the end of the search, and its gate logits
    assert {seen["search"][name] for name in seen["trainable"]} == {torch.float32}
    assert seen["search"]["base_model.model.bert.embeddings.word_embeddings.weight"] == torch.bfloat16
    assert [g.logits.dtype for g in seen["gates"]] == [torch.float32]
    for key in ("fp32", "bf16"):
        assert math.isfinite(runs[key].metrics["final_train_loss"])
    records = [
        json.loads(line) for line in (runs["folder"] / "bf16" / "train_log.jsonl").read_text().splitlines()
    ]
    losses = [r["train_loss"] if r["phase"] == "search" else r["loss"] for r in records]
    assert {r["phase"] for r in records} == {"search", "finetune"} and all(map(math.isfinite, losses))


def test_bf16_adapter_has_the_fp32_format(runs) -> None:
    folder = runs["folder"]
    fp32, bf16, tuned = (folder / name for name in ("fp32", "bf16", "finetune-bf16"))
    for out in (fp32, bf16, tuned):
        assert set(_tensor_dtypes(out / "adapter_model.safetensors").values()) == {torch.float32}
    assert set(_tensor_dtypes(bf16 / "search_weights.safetensors").values()) == {torch.float32}
    # the same kept modules (a bf16 fine-tune of the fp32 search): the same keys and the same config
    assert (
        _tensor_dtypes(tuned / "adapter_model.safetensors").keys()
        == _tensor_dtypes(fp32 / "adapter_model.safetensors").keys()
    )
    assert json.loads((tuned / "adapter_config.json").read_text()) == json.loads(
        (fp32 / "adapter_config.json").read_text()
    )
    fields = json.loads((bf16 / "adapter_config.json").read_text()).keys()
    assert fields == json.loads((fp32 / "adapter_config.json").read_text()).keys()


def test_bf16_adapter_reloads_with_peft_alone_on_an_fp32_base(runs, tiny_bert_dir, tiny_glue_dir) -> None:
    out = runs["folder"] / "bf16"
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert_dir), num_labels=2, ignore_mismatched_sizes=True
    )
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    saved = load_file(str(out / "adapter_model.safetensors"))
    head = reloaded.base_model.model.classifier.modules_to_save["default"]
    assert torch.equal(head.weight, saved["base_model.model.classifier.weight"])
    data = load_task_data(_configs(tiny_bert_dir, tiny_glue_dir, "bf16")[0])
    loader = make_dataloader(data.eval, load_tokenizer(str(tiny_bert_dir)), 8, 16, shuffle=False, seed=0)
    theirs, _ = predict(reloaded, loader)
    ours, _ = predict(runs["bf16"].model, loader)
    assert torch.isfinite(torch.from_numpy(theirs)).all()
    # the same adapter; only the base's bf16 rounding differs (measured: 3e-4 on logits of size 0.05)
    assert abs(theirs - ours).max() < 5e-3


def test_bf16_run_selects_and_scores_like_fp32_within_seed_noise(runs) -> None:
    fp32, bf16 = runs["fp32"], runs["bf16"]
    metric = fp32.metrics["main_metric"]
    assert abs(bf16.metrics["metrics"][metric] - fp32.metrics["metrics"][metric]) <= METRIC_TOLERANCE
    assert abs(bf16.metrics["final_train_loss"] - fp32.metrics["final_train_loss"]) <= LOSS_TOLERANCE
    kept_fp32, kept_bf16 = ({c.name for c in r.selected} for r in (fp32, bf16))
    assert len(kept_fp32 & kept_bf16) / len(kept_fp32 | kept_bf16) >= JACCARD_FLOOR


def test_tiny_llama_classifier_loads_bf16_with_an_fp32_score_head_and_trains_finite(tiny_llama_dir) -> None:
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = load_classifier(str(tiny_llama_dir), get_task_spec("rte"), tokenizer, dtype=torch.bfloat16)
    heads = default_heads(model)
    assert heads == ["score"] and model.score.weight.dtype == torch.float32
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    peft_model = wrap_with_lora(model, ["model.layers.0.self_attn.q_proj"], heads, AdapterConfig(rank=2))
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loader = [random_batch(vocab=len(tokenizer))]
    result = fit(peft_model, loader, optimizer, 1, 0.0, accelerator=make_accelerator("bf16"))
    assert result.steps == 1 and math.isfinite(result.final_loss)
