"""triage: failure text -> category, against the labelled set in tests/data with the
real packaged model (loaded once for the module; missing, the tests fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from somnus_reconciler.semantic import triage
from somnus_reconciler.semantic.triage import Category, Classifier, Triage

LABELLED = Path(__file__).resolve().parent.parent / "data" / "error_messages.yaml"


def labelled() -> list[tuple[str, Category]]:
    return [(e["text"], Category(e["label"])) for e in yaml.safe_load(LABELLED.read_text())]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    shared = triage.default_classifier()
    shared.load()
    return shared


def test_accuracy_over_the_labelled_set(classifier: Classifier) -> None:
    texts, truth = zip(*labelled())
    predicted = classifier.classify_many(texts)
    accuracy = sum(p.category is t for p, t in zip(predicted, truth)) / len(truth)
    # Measured 0.964 (163/169) with bench/classifier.py; the floor leaves room for noise.
    assert accuracy >= 0.93


def test_labelled_set_has_ten_of_every_category_and_no_anchor_is_copied_from_it() -> None:
    entries = labelled()
    assert len(entries) >= 100
    assert all(sum(label is c for _, label in entries) >= 10 for c in Category)
    flat = {" ".join(text.split()).lower() for text, _ in entries}
    assert not flat & {" ".join(a.split()).lower() for a in triage.Anchors.packaged().texts}


@pytest.mark.parametrize("text, expected", [
    ("No space left on device", Category.DISK_FULL),
    ("ssh: connect to host 127.0.0.1 port 2222: Connection refused", Category.NETWORK_FAILURE),
    ("E: Unable to locate package foo", Category.DEPENDENCY_MISSING),
])
def test_plain_messages(classifier: Classifier, text: str, expected: Category) -> None:
    result = classifier.classify(text)
    assert result.category is expected and 0.3 <= result.score <= 1.0


def test_classify_many_keeps_order_and_agrees_with_classify(classifier: Classifier) -> None:
    texts = ["Permission denied (publickey).", "", "OSError: [Errno 28] No space left on device"]
    assert [t.category for t in classifier.classify_many(texts)] == [classifier.classify(t).category for t in texts]


def test_only_network_failures_are_temporary() -> None:
    assert [c for c in Category if c.temporary] == [Category.NETWORK_FAILURE]


@pytest.mark.parametrize("text", ["", "  \n\t\n", "Reading package lists... Done"])
def test_empty_and_info_text_is_unknown_with_score_0_without_loading_the_model(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triage, "load_embedding_model", lambda: pytest.fail("the model was loaded"))
    assert Classifier().classify(text) == Triage(Category.UNKNOWN, 0.0)


def test_informative_text_keeps_the_cause_and_drops_stack_frames() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/opt/train.py", line 88, in <module>\n'
        '    torch.save(model.state_dict(), "/data/epoch3.pt")\n'
        "OSError: [Errno 28] No space left on device\n"
    )
    assert triage.informative_text(traceback) == "OSError: [Errno 28] No space left on device"
    noisy = "\n".join([f"Get:{i} http://deb.debian.org/debian bookworm/main pkg{i}" for i in range(20)]
                      + ["E: Failed to fetch http://deb.debian.org/x.deb  Connection failed"])
    assert triage.informative_text(noisy).splitlines() == ["E: Failed to fetch http://deb.debian.org/x.deb  Connection failed"]
    assert len(triage.informative_text("error: " + "x" * 5000)) <= triage.MAX_CHARS + 5


def test_importing_triage_does_not_import_torch() -> None:
    subprocess.run([sys.executable, "-c", "import somnus_reconciler.semantic.triage, sys; assert 'torch' not in sys.modules"],
                   check=True)
