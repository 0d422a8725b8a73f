"""What each GLUE task looks like on disk and on the hub, and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass

from diffora.errors import OptionError

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    """Layout, labels and metrics of one task.

    `text_columns` / `label_column` are header names, or 0-based column indices for files without a
    header (CoLA). `label_names` lists the labels as they appear in the file; a label's position is
    its class index. `None` means regression. `num_columns` is the field count of a header-less file
    (with a header, every row must match the header instead). The `hub_*` fields locate the task in the
    hub copy (`nyu-mll/glue`), whose column names differ from the TSV headers.
    """

    name: str
    glue_folder: str
    train_file: str
    eval_file: str
    has_header: bool
    text_columns: tuple[str, ...] | tuple[int, ...]
    label_column: str | int
    label_names: tuple[str, ...] | None
    metric_names: tuple[str, ...]
    main_metric: str
    num_columns: int | None = None
    hub_config: str | None = None
    hub_eval_split: str = "validation"
    hub_text_columns: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        name="cola",
        glue_folder="CoLA",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=False,
        text_columns=(3,),
        label_column=1,
        label_names=BINARY,
        num_columns=4,
        metric_names=("matthews_correlation",),
        main_metric="matthews_correlation",
        hub_config="cola",
        hub_text_columns=("sentence",),
    ),
    "sst2": TaskSpec(
        name="sst2",
        glue_folder="SST-2",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("sentence",),
        label_column="label",
        label_names=BINARY,
        metric_names=("accuracy",),
        main_metric="accuracy",
        hub_config="sst2",
        hub_text_columns=("sentence",),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        glue_folder="MRPC",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("#1 String", "#2 String"),
        label_column="Quality",
        label_names=BINARY,
        metric_names=("accuracy", "f1"),
        main_metric="accuracy",
        hub_config="mrpc",
        hub_text_columns=("sentence1", "sentence2"),
    ),
    "stsb": TaskSpec(
        name="stsb",
        glue_folder="STS-B",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("sentence1", "sentence2"),
        label_column="score",
        label_names=None,
        metric_names=("pearson", "spearmanr"),
        main_metric="pearson",
        hub_config="stsb",
        hub_text_columns=("sentence1", "sentence2"),
    ),
    "rte": TaskSpec(
        name="rte",
        glue_folder="RTE",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=ENTAILMENT,
        metric_names=("accuracy",),
        main_metric="accuracy",
        hub_config="rte",
        hub_text_columns=("sentence1", "sentence2"),
    ),
    "qnli": TaskSpec(
        name="qnli",
        glue_folder="QNLI",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("question", "sentence"),
        label_column="label",
        label_names=ENTAILMENT,
        metric_names=("accuracy",),
        main_metric="accuracy",
        hub_config="qnli",
        hub_text_columns=("question", "sentence"),
    ),
    "qqp": TaskSpec(
        name="qqp",
        glue_folder="QQP",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("question1", "question2"),
        label_column="is_duplicate",
        label_names=BINARY,
        metric_names=("accuracy", "f1"),
        main_metric="accuracy",
        hub_config="qqp",
        hub_text_columns=("question1", "question2"),
    ),
    "mnli": TaskSpec(
        name="mnli",
        glue_folder="MNLI",
        train_file="train.tsv",
        eval_file="dev_matched.tsv",
        has_header=True,
        text_columns=("sentence1", "sentence2"),
        label_column="gold_label",
        label_names=("contradiction", "entailment", "neutral"),
        metric_names=("accuracy",),
        main_metric="accuracy",
        hub_config="mnli",
        hub_eval_split="validation_matched",
        hub_text_columns=("premise", "hypothesis"),
    ),
    "wnli": TaskSpec(
        name="wnli",
        glue_folder="WNLI",
        train_file="train.tsv",
        eval_file="dev.tsv",
        has_header=True,
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=BINARY,
        metric_names=("accuracy",),
        main_metric="accuracy",
        hub_config="wnli",
        hub_text_columns=("sentence1", "sentence2"),
    ),
}


def get_task_spec(name: str) -> TaskSpec:
    """The spec of a GLUE task; 'SST-2', 'sst2' and 'SST2' all name the same one."""
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise OptionError(
            f"unknown task {name!r}; choose one of {', '.join(GLUE_TASKS)}, "
            "or 'custom' with `train_file` and `eval_file`"
        )
    return GLUE_TASKS[key]
