"""Loading models through the library: transformers' load report stays quiet unless asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertModel
from transformers.utils import logging as hf_logging

from conftest import tiny_bert_config, tiny_tokenizer
from diffora.app.pipeline import open_workbench
from diffora.config import AdapterConfig, DataConfig
from diffora.tasks.models import VERBOSE_ENV, load_classifier, load_tokenizer
from diffora.tasks.registry import get_task_spec

REPORT = "newly initialized"


def printed_or_logged(capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> str:
    """Everything written to stdout, stderr or a logger since the last call."""
    captured = capfd.readouterr()
    text = captured.out + captured.err + caplog.text
    caplog.clear()
    return text


@pytest.fixture
def backbone_dir(tmp_path: Path) -> Path:
    """A tiny BERT without a classification head: loading it as a classifier makes transformers report the
    new head's weights."""
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def transformers_defaults(monkeypatch: pytest.MonkeyPatch):
    """transformers at its own default verbosity (the test suite quiets it), no $DIFFORA_VERBOSE."""
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    yield
    hf_logging.set_verbosity(verbosity)


def test_the_api_loads_a_model_without_the_load_report(
    backbone_dir, tiny_glue_dir, transformers_defaults, capfd, caplog
) -> None:
    data = DataConfig(task="rte", data_dir=str(tiny_glue_dir), max_length=16)
    bench = open_workbench(data, AdapterConfig(model=str(backbone_dir)), seed=0)
    assert "classifier" in bench.head_modules
    printed = printed_or_logged(capfd, caplog)
    assert REPORT not in printed and "Loading weights" not in printed
    assert hf_logging.get_verbosity() == hf_logging.WARNING  # the caller's setting is back


def test_the_load_report_shows_when_asked_for(
    backbone_dir, transformers_defaults, capfd, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_task_spec("rte")
    tokenizer = load_tokenizer(str(backbone_dir))
    load_classifier(str(backbone_dir), spec, tokenizer, verbose=True)
    assert REPORT in printed_or_logged(capfd, caplog)
    monkeypatch.setenv(VERBOSE_ENV, "1")
    load_classifier(str(backbone_dir), spec, tokenizer)
    assert REPORT in printed_or_logged(capfd, caplog)
    load_classifier(str(backbone_dir), spec, tokenizer, verbose=False)  # the argument wins over the variable
    assert REPORT not in printed_or_logged(capfd, caplog)
