"""Accuracy and latency of triage.Classifier over the labelled failure texts.

    python3 bench/classifier.py [--data tests/data/error_messages.yaml]

Prints N, accuracy, per-category precision and recall, the confusion table (rows:
true label, columns: predicted), the misclassified texts (truncated), the model's
load time (model plus anchor embeddings, cold in this process) and the median
latency of one `classify` call per text. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from somnus_reconciler.semantic.triage import Category, Classifier  # noqa: E402

DEFAULT_DATA = REPO / "tests" / "data" / "error_messages.yaml"
SHORT = {c: c.value.split("_")[0][:7] for c in Category}  # column headings


def load_labelled(path: Path) -> list[tuple[str, Category, str]]:
    """(text, true category, source) per entry of the labelled set."""
    return [(e["text"], Category(e["label"]), e["source"]) for e in yaml.safe_load(path.read_text())]


def one_line(text: str, width: int = 110) -> str:
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    labelled = load_labelled(args.data)

    classifier = Classifier()
    start = time.perf_counter()
    classifier.load()
    load_s = time.perf_counter() - start
    latencies, predicted = [], []
    for text, _, _ in labelled:
        start = time.perf_counter()
        predicted.append(classifier.classify(text))
        latencies.append(time.perf_counter() - start)

    truth = [category for _, category, _ in labelled]
    hits = sum(t == p.category for t, p in zip(truth, predicted))
    print(f"N = {len(labelled)}   accuracy = {hits / len(labelled):.3f} ({hits}/{len(labelled)})")
    print(f"model load (model + anchors) = {load_s:.2f}s   "
          f"median classify latency = {statistics.median(latencies) * 1000:.1f}ms per text\n")

    print(f"{'category':<20} {'precision':>9} {'recall':>7} {'n':>4}")
    for category in Category:
        chosen = [t for t, p in zip(truth, predicted) if p.category is category]
        actual = [p for t, p in zip(truth, predicted) if t is category]
        precision = sum(t is category for t in chosen) / len(chosen) if chosen else float("nan")
        recall = sum(p.category is category for p in actual) / len(actual) if actual else float("nan")
        print(f"{category.value:<20} {precision:>9.2f} {recall:>7.2f} {len(actual):>4}")

    print("\nconfusion (rows: true, columns: predicted)")
    print(f"{'':<20}" + "".join(f"{SHORT[c]:>8}" for c in Category))
    for row in Category:
        counts = [sum(t is row and p.category is col for t, p in zip(truth, predicted)) for col in Category]
        print(f"{row.value:<20}" + "".join(f"{n:>8}" for n in counts))

    wrong = [(label, p, source, text) for (text, label, source), p in zip(labelled, predicted) if p.category is not label]
    print(f"\nmisclassified ({len(wrong)}):")
    for label, p, source, text in wrong:
        print(f"  {label.value} -> {p.category.value} {p.score:.3f} [{source}] {one_line(text)}")


if __name__ == "__main__":
    main()
