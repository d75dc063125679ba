"""The task table: every downstream task MiniGlot reads, scores and fine-tunes, declared once.

Like the stage registry for stages: recipes and the CLI take their names from it, the data readers
their formats, evaluation its head, defaults and headline metric, reports and charts the headline,
the model card the pipeline tag, and the Evaluation tab its choices. Plain data (no torch).

Fine-tuning defaults: about 15,000 examples seen (2 to 10 epochs: 10 for SIB-200's 701 texts, 2 for
MasakhaNER's 6.9k sentences) with early stopping after 3 epochs without dev improvement, batch 16, and
BERT-base's rate 5e-5 scaled by 768 / hidden size (`engine.evaluate.finetune`): ~1k-sentence sets converge
on 2 CPU cores in minutes for a 6-layer/384 model. On MasakhaNER 2.0 Swahili (6.6k train sentences, 2 epochs)
the 12-layer e5 teacher takes about 15 CPU-minutes and the default 9.4M student 5 (`bench/task_quality.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import TaskDataError


@dataclass(frozen=True)
class Task:
    """One kind of task. `token_level`: a label per word (token classification) rather than per text;
    `reader`: how its files are read (`conllu`, `iob` or `table`, with `formats` their suffixes);
    `scoring`: its metrics (`tags`: accuracy and macro-F1 over words, `entities`: seqeval's entity F1,
    `labels`: accuracy and macro-F1 over texts, `retrieval`: top-1 accuracy and MRR), of which `headline`
    is the one tables, charts and model selection use; `hub_tags`: a hub data set's tag column names;
    `trainable`: a task model can be fine-tuned for it (retrieval only compares embeddings)."""

    name: str
    title: str
    token_level: bool
    reader: str
    formats: tuple[str, ...]
    scoring: str
    headline: str
    hub_tags: tuple[str, ...] = ()
    epochs: int = 10  # at most; see `epochs_for`
    learning_rate: float = 5e-5  # at hidden size 768; scaled by 768 / hidden
    batch_size: int = 16
    patience: int = 3
    examples: int = 15_000  # the default training budget in examples seen (see `epochs_for`)
    trainable: bool = True

    def epochs_for(self, train_size: int) -> int:
        """Default epochs for `train_size` training examples: `examples` seen in all, within 2 to `epochs`."""
        return max(2, min(self.epochs, self.examples // max(train_size, 1)))

    @property
    def pipeline_tag(self) -> str:
        """The Hugging Face pipeline (and model card task type) a model of this task serves."""
        return "token-classification" if self.token_level else "text-classification"


HEAD_SUFFIX = {True: "ForTokenClassification", False: "ForSequenceClassification"}  # by token_level: the
# architecture name's end of a task model (BertForTokenClassification, XLMRobertaForSequenceClassification, …)
TABLES = (".csv", ".tsv", ".jsonl")  # classification data: a text and a label column
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("pos", "part-of-speech tagging (UPOS)", True, "conllu", (".conllu", ".conll"), "tags", "accuracy",
         hub_tags=("upos",)),
    Task("ner", "named-entity recognition (IOB)", True, "iob", (".txt", ".conll", ".iob", ".iob2", ".bio", ".tsv"),
         "entities", "f1", hub_tags=("ner_tags",)),
    Task("sentiment", "sentiment classification", False, "table", TABLES, "labels", "macro_f1"),
    Task("topic", "topic classification", False, "table", TABLES, "labels", "macro_f1"),
    Task("retrieval", "cross-lingual retrieval (two line-aligned text files)", False, "parallel",
         (".dev", ".devtest", ".txt"), "retrieval", "top1", trainable=False),
)}
TRAINABLE = tuple(name for name, kind in TASKS.items() if kind.trainable)  # what task models are made for


def task(name: str) -> Task:
    """The task named `name` (a column label `topic@sib_swh` names `topic`); a TaskDataError lists the known."""
    try:
        return TASKS[str(name).split("@")[0]]
    except KeyError:
        raise TaskDataError(f"Unknown task {name!r}; choose one of {', '.join(TASKS)}.") from None
