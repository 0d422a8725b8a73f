"""The adapter is vanilla PEFT: a process that never imports diffora reproduces diffora's logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from safetensors.numpy import load_file, save_file

from diffora.app.pipeline import run
from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig
from diffora.training.loop import predict

VANILLA_SCRIPT = textwrap.dedent("""
    import sys, torch
    from peft import PeftModel
    from safetensors.numpy import load_file, save_file
    from transformers import AutoModelForSequenceClassification
    base_path, adapter_dir, batches_path, out_path, num_labels = sys.argv[1:6]
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=int(num_labels),
                                                              ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    batches = load_file(batches_path)
    count = len(batches) // 3
    with torch.no_grad():
        keys = ("input_ids", "attention_mask", "token_type_ids")
        inputs = [{key: torch.from_numpy(batches[f"{key}{i}"]) for key in keys} for i in range(count)]
        logits = [model(**batch).logits for batch in inputs]
        merged = model.merge_and_unload()
        merged_logits = [merged(**batch).logits for batch in inputs]
    assert "diffora" not in sys.modules, "the vanilla check must not import diffora"
    save_file({"logits": torch.cat(logits).numpy(), "merged": torch.cat(merged_logits).numpy()}, out_path)
""")


def test_vanilla_peft_reload_and_merge_give_diffora_logits(tiny_bert_dir, tiny_glue_dir, tmp_path) -> None:
    out = tmp_path / "run"
    result = run(
        DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16),
        AdapterConfig(model=str(tiny_bert_dir), rank=2),
        SearchConfig(lora_drop=False, epochs=2, batch_size=8, lr=1e-2, gate_lr=0.05),
        FinetuneConfig(epochs=2, batch_size=8, lr=1e-2),
        output_dir=out,
    )
    from diffora.tasks.batching import make_dataloader
    from diffora.tasks.data import load_task_data
    from diffora.tasks.models import load_tokenizer

    data = load_task_data(DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16))
    loader = make_dataloader(data.eval, load_tokenizer(str(tiny_bert_dir)), 8, 16, shuffle=False, seed=0)
    ours, _ = predict(result.model, loader)
    batches = {}
    for index, batch in enumerate(loader):
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            batches[f"{key}{index}"] = batch[key].numpy()
    save_file(batches, str(tmp_path / "batches.safetensors"))
    subprocess.run(
        [
            sys.executable,
            "-c",
            VANILLA_SCRIPT,
            str(tiny_bert_dir),
            str(out),
            str(tmp_path / "batches.safetensors"),
            str(tmp_path / "logits.safetensors"),
            "2",
        ],
        check=True,
    )
    theirs = load_file(str(tmp_path / "logits.safetensors"))
    assert np.abs(theirs["logits"] - ours).max() < 1e-5
    assert np.abs(theirs["merged"] - ours).max() < 1e-4
    assert np.abs(ours).max() > 0 and not np.allclose(ours[:, 0], ours[0, 0])  # real, varying outputs
    assert "classifier" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]


def test_an_untrained_pooler_trains_with_the_head_and_reloads_with_peft_alone(
    tiny_bert_dir, tiny_glue_dir, tmp_path
) -> None:
    """The tiny model's pooler has a zero bias (never trained): 'auto' trains it, the adapter carries it."""
    assert AdapterConfig().pooler == "frozen"  # only on request
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    run(
        DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16),
        AdapterConfig(model=str(tiny_bert_dir), rank=2, pooler="auto"),
        SearchConfig(epochs=1, batch_size=8, lr=1e-2),
        FinetuneConfig(epochs=1, batch_size=8, lr=1e-2),
        output_dir=out,
    )
    saved = json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
    assert "bert.pooler" in saved
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=2)
    untouched = base.bert.pooler.dense.weight.detach().clone()
    model = PeftModel.from_pretrained(base, str(out))
    reloaded = model.base_model.model.bert.pooler.modules_to_save["default"].dense.weight
    assert not torch.equal(reloaded, untouched)  # the trained pooler came back from the adapter file
