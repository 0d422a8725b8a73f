"""Method names shared by the GLUE runner and its report."""

# Selectors compared at the same parameter budget (profiles with `budget_fraction`): the cpu profile's core.
SELECTION_METHODS = (
    "lora",
    "lora_equal_steps",
    "diffora",
    "random",
    "diffora_magnitude",
    "diffora_perturbation",
    "mlp",
    "attention",
    "loradrop",
)

# Methods run at the learning rate and epochs their tuner chose on the task's search split
# (benchmarks/tune_search_split.py --method <base>), read back from its committed file: name -> base method.
TUNED_METHODS = {"loraplus_tuned": "loraplus", "adalora_tuned": "adalora"}
