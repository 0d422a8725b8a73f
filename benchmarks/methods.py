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
