"""Concurrency soak: simulated students ask questions in one process while another process ingests the same index.

    python bench/soak.py --students 4 --minutes 3

The students are threads sharing one Searcher, as the app's sessions (and the API's workers) do, asking through
the tutor (`--tutor`, with a fake chat model: the LLM is not what is measured) or the searcher alone (default).
Meanwhile a writer thread runs real `python -m ingest` processes on the same embedded index, in a cycle: edit a
lesson (a new section with a made-up word), delete a lesson and `--prune`, put it back, and every
`--rebuild-every` cycles a `--rebuild` (staging collection renamed live). After each ingest it times how long the
students' searcher takes to find the new word (freshness). Reported: questions answered, errors (target 0, each
kind with one traceback), latency p50/p95/max, ingests run and the worst freshness delay.
The index is built first in a temporary folder from `--lessons` copies of short sample lessons (bundled embedder).
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.ingestion import IngestJob, discover  # noqa: E402
from rag.retrieval import Searcher  # noqa: E402
from rag.settings import Settings  # noqa: E402
from rag.workspace import open_index, open_searcher  # noqa: E402

LESSONS = ROOT / "data" / "lessons"
FILES = ("lop12/04-tiem-can.md", "lop12/03-gtln-gtnn.md", "lop11/06-gioi-han-day-so.md")
QUESTIONS = [
    "Tiệm cận đứng của đồ thị hàm số là gì?", "Cách tìm giá trị lớn nhất của hàm số trên một đoạn",
    "tiem can ngang cua do thi ham so", "Giới hạn của dãy số là gì?", "Khi nào dãy số có giới hạn 0?",
    "giá trị nhỏ nhất của hàm số", "Cho ví dụ về tiệm cận xiên", "gioi han vo cuc",
]
COLLECTION = "vimath_soak"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


class Soak:
    def __init__(self, settings: Settings, lessons: Path, tutor: bool) -> None:
        self.settings = settings
        self.lessons = lessons
        self.searcher: Searcher = open_searcher(settings, announce=False)
        self.tutor = self._tutor() if tutor else None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.first_trace: dict[str, str] = {}
        self.ingests: Counter[str] = Counter()
        self.ingest_failures: list[str] = []
        self.freshness: list[float] = []
        self.stale_after_timeout = 0
        self.stale_checks: list[str] = []

    def _tutor(self):  # type: ignore[no-untyped-def]
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from langchain_core.messages import AIMessage

        from rag.answering import Tutor

        replies = itertools.repeat(AIMessage("Theo tài liệu, đó là nội dung của đoạn [1]."))
        return Tutor(self.searcher, self.settings, chat_factory=lambda *_: GenericFakeChatModel(messages=replies))

    def student(self, n: int) -> None:
        from rag.answering import ask

        for turn in itertools.count(n):
            if self.stop.is_set():
                return
            question = QUESTIONS[turn % len(QUESTIONS)]
            started = time.perf_counter()
            try:
                if self.tutor is not None:
                    answer = ask(self.tutor, question)
                    if answer.status.value not in ("ok", "not_covered"):
                        raise RuntimeError(f"answer status {answer.status.value}: {answer.notice}")
                else:
                    self.searcher.search(question, self.settings.top_k)
            except Exception as exc:  # every failure a student would see counts
                kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                with self.lock:
                    self.errors[kind] += 1
                    self.first_trace.setdefault(kind, traceback.format_exc())
                continue
            with self.lock:
                self.latencies.append(time.perf_counter() - started)

    def ingest(self, *flags: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", "ingest", str(self.lessons), "--index", str(self.settings.index_dir),
                               "--collection", COLLECTION, "--embedder", "bundled", "--quiet", *flags],
                              env=env, capture_output=True, text=True)
        self.ingests[" ".join(flags) or "edit"] += 1
        if done.returncode != 0:
            self.ingest_failures.append(done.stderr[-2000:])

    def fresh_within(self, word: str, present: bool, limit_s: float = 30.0) -> None:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            try:
                found = any(word in hit.text for hit in self.searcher.search(word, 5))
            except Exception:  # counted by the students; the probe only times freshness
                found = not present
            if found == present:
                self.freshness.append(time.monotonic() - started)
                return
            time.sleep(0.1)
        self.stale_after_timeout += 1
        self.stale_checks.append(f"{word} {'present' if present else 'absent'}")

    def writer(self, rebuild_every: int) -> None:
        edited, removed = self.lessons / FILES[0], self.lessons / FILES[1]
        original, kept = edited.read_text(encoding="utf-8"), removed.read_text(encoding="utf-8")
        for cycle in itertools.count(1):
            if self.stop.is_set():
                return
            word = f"soakword{cycle}x"
            edited.write_text(f"{original}\n\n## 9. Mục {word}\n\nĐịnh nghĩa {word}: một khái niệm chỉ có trong lần nạp thứ {cycle}.\n",
                              encoding="utf-8")
            self.ingest()
            self.fresh_within(word, present=True)
            removed.unlink()
            self.ingest("--prune")
            removed.write_text(kept, encoding="utf-8")
            self.ingest()
            if rebuild_every and cycle % rebuild_every == 0:
                edited.write_text(original, encoding="utf-8")
                self.ingest("--rebuild")
                self.fresh_within(word, present=False)

    def run(self, students: int, seconds: float, rebuild_every: int) -> None:
        threads = [threading.Thread(target=self.student, args=(n,), daemon=True) for n in range(students)]
        writer = threading.Thread(target=self.writer, args=(rebuild_every,), daemon=True)
        started = time.monotonic()
        for thread in [*threads, writer]:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        writer.join(timeout=600)  # lets the running ingest finish, so the folder is not left mid-write
        self.elapsed = time.monotonic() - started

    def report(self) -> str:
        lat = self.latencies
        lines = [
            f"students: questions answered {len(lat)} in {self.elapsed:.0f} s ({len(lat) / self.elapsed:.1f}/s), "
            f"errors {sum(self.errors.values())}",
            f"latency: p50 {percentile(lat, 50) * 1000:.0f} ms, p95 {percentile(lat, 95) * 1000:.0f} ms, "
            f"max {max(lat, default=float('nan')) * 1000:.0f} ms",
            f"writer: ingests {dict(self.ingests)}, failed {len(self.ingest_failures)}; new content seen after "
            f"max {max(self.freshness, default=float('nan')):.2f} s (median {statistics.median(self.freshness) if self.freshness else float('nan'):.2f} s, "
            f"{len(self.freshness)} checks, {self.stale_after_timeout} not seen within 30 s {self.stale_checks or ''})",
        ]
        for kind, count in self.errors.most_common():
            lines.append(f"error ×{count}: {kind}\n{self.first_trace[kind]}")
        lines += [f"ingest failure:\n{failure}" for failure in self.ingest_failures[:3]]
        return "\n".join(lines)


def build(folder: Path, method: str) -> tuple[Settings, Path]:
    lessons, index_dir = folder / "lessons", folder / "index"
    for name in FILES:
        (lessons / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LESSONS / name, lessons / name)
    settings = Settings(index_dir=index_dir, collection=COLLECTION, embedder="bundled", chroma_host=None,
                        retrieval_method=method)
    index, embeddings = open_index(settings, announce=False)
    files, _ = discover([lessons])
    print(IngestJob(index, embeddings).run(files).summary(), file=sys.stderr)
    return settings, lessons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--method", default="hybrid", help="retrieval method of the students' searcher")
    parser.add_argument("--tutor", action="store_true", help="ask through the Tutor with a fake chat model")
    parser.add_argument("--rebuild-every", type=int, default=3, help="a --rebuild every N writer cycles (0: never)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vimath-soak-") as folder:
        settings, lessons = build(Path(folder), args.method)
        soak = Soak(settings, lessons, args.tutor)
        soak.run(args.students, args.minutes * 60, args.rebuild_every)
        print(f"{args.students} students, {args.method}, {'tutor (fake LLM)' if args.tutor else 'searcher'}, "
              f"{args.minutes:g} min")
        print(soak.report())
    return 0 if not soak.errors and not soak.ingest_failures else 1


if __name__ == "__main__":
    sys.exit(main())
