"""DiffoRA: learn which modules of a transformer deserve a LoRA adapter, then fine-tune them with PEFT."""

__version__ = "0.1.0"

from diffora.candidates import Candidate, find_candidates  # noqa: E402
from diffora.config import AdapterConfig, DataConfig, FinetuneConfig, SearchConfig  # noqa: E402
from diffora.dam import DAM  # noqa: E402
from diffora.errors import DifforaError  # noqa: E402
from diffora.pipeline import RunResult, SearchOutcome, evaluate_adapter, finetune, run, search  # noqa: E402

__all__ = [
    "AdapterConfig",
    "Candidate",
    "DAM",
    "DataConfig",
    "DifforaError",
    "FinetuneConfig",
    "RunResult",
    "SearchConfig",
    "SearchOutcome",
    "evaluate_adapter",
    "find_candidates",
    "finetune",
    "run",
    "search",
]
