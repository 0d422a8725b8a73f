"""The task-family registry: every task name the CLI accepts maps to one family with both functions."""

from __future__ import annotations

import pytest

from diffora.app.families import REGISTRY, family_of
from diffora.errors import DifforaError
from diffora.tasks.registry import GLUE_TASKS


def test_every_task_has_a_family_whose_functions_import() -> None:
    assert {family_of(task).name for task in GLUE_TASKS} == {"classification"}
    assert family_of("custom").name == "classification" and family_of("causal").name == "causal"
    assert family_of("RTE") is family_of("rte")
    for family in set(REGISTRY.values()):  # the lazily named functions exist
        from diffora.app.families import _load

        assert callable(_load(family.workbench)) and callable(_load(family.adapter_evaluation))


def test_an_unknown_task_is_one_line() -> None:
    with pytest.raises(DifforaError, match="unknown task 'sts'; choose one of") as error:
        family_of("sts")
    assert "\n" not in str(error.value)
