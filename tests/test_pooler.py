"""The classifier's pooler: found, judged untrained by its zero bias, trained or reset as the option says."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

from conftest import tiny_bert_config
from diffora.config import AdapterConfig
from diffora.errors import OptionError
from diffora.tasks.models import (
    default_heads,
    find_pooler,
    pooler_is_untrained,
    reset_pooler_to_identity,
    trained_pooler,
)


def _bert(trained_bias: bool) -> BertForSequenceClassification:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    if trained_bias:
        with torch.no_grad():
            model.bert.pooler.dense.bias.fill_(0.1)
    return model


def test_an_untrained_pooler_trains_under_auto_and_a_pretrained_one_stays_frozen() -> None:
    untrained, pretrained = _bert(False), _bert(True)
    assert find_pooler(untrained) == "bert.pooler"
    assert pooler_is_untrained(untrained, "bert.pooler")
    assert not pooler_is_untrained(pretrained, "bert.pooler")
    assert default_heads(untrained) == ["classifier"]  # frozen unless asked
    assert default_heads(untrained, "auto") == ["classifier", "bert.pooler"]
    assert default_heads(pretrained, "auto") == ["classifier"]
    assert default_heads(pretrained, "train") == ["classifier", "bert.pooler"]
    assert default_heads(untrained, "frozen") == ["classifier"]


def test_a_model_without_a_pooler_trains_its_head_only() -> None:
    model = GPT2ForSequenceClassification(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert find_pooler(model) is None and trained_pooler(model, "train") is None
    assert default_heads(model, "auto") == ["score"]


def test_identity_passes_the_first_token_through_the_pooler() -> None:
    model = _bert(True)
    reset_pooler_to_identity(model)
    hidden = torch.randn(3, 5, 32)
    assert torch.allclose(model.bert.pooler(hidden), torch.tanh(hidden[:, 0]))


def test_an_unknown_pooler_option_is_refused_in_one_line() -> None:
    with pytest.raises(OptionError, match="`pooler` must be one of frozen, auto, train, identity"):
        AdapterConfig(pooler="mean")
