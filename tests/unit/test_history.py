"""history: the journal's `history` filters, `somnus history` (table, JSON, errors), and
semantic search with the real chromadb and the real packaged model (loaded once for the
module; a missing package fails the tests, it does not skip them)."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from somnus_reconciler import journal as journal_module
from somnus_reconciler.cli import history_view
from somnus_reconciler.cli.commands import cli
from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.passes.history_query import HistoryItem
from somnus_reconciler.semantic import history, triage
from somnus_reconciler.values.outcome import Outcome

REPO = Path(__file__).resolve().parents[2]
DNS_FAILURE = ("task 'apt: install packages' failed: Failed to fetch http://deb.debian.org/debian/pool/main/n/"
               "nodejs/nodejs_18.19.0+dfsg-6_amd64.deb  Temporary failure resolving 'deb.debian.org'")

# (address, action, outcome, message, category): what a few weeks of applies leave behind.
EVENTS: list[tuple[str, str, Outcome, str, str | None]] = [
    ("vm/coder-1", "create", Outcome.OK, "created (debian-12, 2 vcpu, 4Gi, disk 20Gi)", None),
    ("vm/coder-1", "pack install base-tools", Outcome.OK, "installed in 48.2s; 3 verify command(s) passed", None),
    ("vm/coder-1", "pack install web-development", Outcome.RETRYING, DNS_FAILURE, "NETWORK_FAILURE"),
    ("vm/coder-1", "pack install web-development", Outcome.ROLLED_BACK,
     DNS_FAILURE + "; reverted to somnus-pack-web-development-20240501T101500", "NETWORK_FAILURE"),
    ("container/notebook", "create", Outcome.OK, "created (image somnus/base:bookworm, 1 cpu, 2Gi)", None),
    ("container/notebook", "pack install data-analysis", Outcome.OK, "installed in 95.0s; 2 verify command(s) passed",
     None),
    ("vm/trainer-1", "create", Outcome.OK, "created (debian-12, 4 vcpu, 16Gi, disk 40Gi)", None),
    ("vm/trainer-1", "pack install ml-training", Outcome.ROLLED_BACK,
     "task 'pip: install requirements' failed: ERROR: Could not install packages due to an OSError: [Errno 28] "
     "No space left on device: '/usr/local/lib/python3.11/dist-packages/torch/lib/libtorch_cuda.so'; "
     "reverted to somnus-pack-ml-training-20240501T110000", "DISK_FULL"),
    ("vm/trainer-1", "pack install cuda-toolkit", Outcome.FAILED,
     "verify 'python3 -c \"import torch; torch.zeros(1).cuda()\"' failed: RuntimeError: The NVIDIA driver on "
     "your system is too old (found version 11040). Please update your GPU driver", "CUDA_ERROR"),
    ("container/scratch", "pack install base-tools", Outcome.ROLLED_BACK,
     "task 'copy: local apt source' failed: [Errno 13] Permission denied: '/etc/apt/sources.list.d/local.list'; "
     "restored from somnus-snapshots/scratch:somnus-pack-base-tools-20240501T111500", "PERMISSION_DENIED"),
    ("vm/coder-2", "create", Outcome.OK, "created (profile small, 1 vcpu, 1Gi)", None),
    ("vm/coder-2", "update", Outcome.OK, "memory 1Gi -> 1536Mi (live)", None),
    ("vm/coder-1", "soft-reboot", Outcome.OK, "2 process(es) back in 3.1s", None),
    ("vm/coder-1", "recover", Outcome.OK, "rolled back pack install web-development left open by pid 4121: "
     "reverted to somnus-pack-web-development-20240501T120000", None),
    ("vm/coder-2", "rollback", Outcome.OK, "reverted by hand to somnus-pack-data-analysis-20240501T121500", None),
    ("vm/coder-1", "drift", Outcome.CORRECTED, "memory is 6Gi, declared 8Gi (changed outside somnus): set back to 8Gi",
     None),
    ("container/notebook", "drift", Outcome.REPORTED,
     "stopped outside somnus; declared running: left as it is (drift policy report)", None),
    ("vm/coder-2", "pack install data-analysis", Outcome.OK, "installed in 61.7s; 2 verify command(s) passed", None),
    ("container/api", "create", Outcome.FAILED, "container exited with code 1: Traceback (most recent call last):\n"
     '  File "/app/main.py", line 12, in <module>\n    url = os.environ["DATABASE_URL"]\n'
     "KeyError: 'DATABASE_URL'", "RUNTIME_ERROR"),
    ("vm/coder-3", "create", Outcome.FAILED, "libvirt: internal error: process exited while connecting to monitor: "
     "qemu-system-x86_64: Could not open '/var/lib/somnus/vms/coder-3.qcow2': Permission denied",
     "PERMISSION_DENIED"),
    ("container/notebook", "pack install jupyter", Outcome.FAILED,
     "task 'apt: install packages' failed: E: Unable to locate package python3-jupyterlab", "DEPENDENCY_MISSING"),
    ("vm/coder-2", "delete", Outcome.OK, "pruned: no longer declared", None),
    ("vm/coder-1", "stop", Outcome.OK, "shut down in 4.2s", None),
    ("vm/coder-1", "start", Outcome.OK, "started; agent connected after 14.0s", None),
    ("vm/coder-1", "soft-reboot", Outcome.TIMED_OUT, "1 of 2 process(es) not back after 60s: notebook", None),
    ("container/notebook", "pack remove data-analysis", Outcome.OK, "removed in 12.3s", None),
    ("vm/trainer-1", "pack install ml-training", Outcome.RETRYING,
     "ssh: connect to host 127.0.0.1 port 40022: Connection timed out", "NETWORK_FAILURE"),
    ("vm/trainer-1", "pack install ml-training", Outcome.OK, "installed in 402.5s; 4 verify command(s) passed", None),
    ("container/api", "create", Outcome.OK, "created (image somnus/base:bookworm, 0.5 cpu, 512Mi)", None),
    ("vm/coder-1", "pack install web-development", Outcome.OK, "installed in 130.4s; 3 verify command(s) passed", None),
    ("container/api", "drift", Outcome.CORRECTED,
     "image somnus/base:bookworm was replaced outside somnus: recreated from the declared spec", None),
]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The journal's clock: events recorded at chosen times."""
    fake = FakeClock(1_000.0)
    monkeypatch.setattr(journal_module, "time", fake)
    return fake


def record_at(journal: Journal, clock: FakeClock, at: float, address: str, action: str, outcome: str,
              message: str, category: str | None = None) -> None:
    clock.now = at
    journal.record(address, action, Outcome(outcome), message, category)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["history", *args])
    return result.exit_code, result.stdout, result.stderr


# -- Journal.history -------------------------------------------------------------------


@pytest.fixture
def five_events(tmp_path: Path, clock: FakeClock) -> Journal:
    journal = Journal(tmp_path / "journal.sqlite")
    record_at(journal, clock, 1000, "vm/a", "create", "ok", "created")
    record_at(journal, clock, 2000, "vm/a", "pack install x", "failed", "no route", "NETWORK_FAILURE")
    record_at(journal, clock, 3000, "container/b", "create", "ok", "created")
    record_at(journal, clock, 4000, "vm/a", "pack install x", "ok", "installed")
    record_at(journal, clock, 5000, "vm/a", "drift", "corrected", "memory set back")
    return journal


def ids(entries: list[Event]) -> list[int]:
    return [entry.id for entry in entries]


def test_history_is_oldest_first_with_every_field(five_events: Journal) -> None:
    entries = five_events.history()
    assert ids(entries) == [1, 2, 3, 4, 5]
    assert entries[1] == Event(2, 2000.0, "vm/a", "pack install x", "failed", "no route", "NETWORK_FAILURE")
    assert entries[0].category is None


@pytest.mark.parametrize("filters, expected", [
    ({"address": "vm/a"}, [1, 2, 4, 5]),
    ({"address": "vm/none"}, []),
    ({"since": 3000.0}, [3, 4, 5]),
    ({"outcome": "ok"}, [1, 3, 4]),
    ({"after_id": 3}, [4, 5]),
    ({"limit": 2}, [4, 5]),  # the newest two, still oldest first
    ({"limit": 10}, [1, 2, 3, 4, 5]),
    ({"address": "vm/a", "outcome": "ok"}, [1, 4]),
    ({"address": "vm/a", "since": 1500.0, "limit": 2}, [4, 5]),
    ({"after_id": 1, "outcome": "ok", "limit": 1}, [4]),
])
def test_history_filters(five_events: Journal, filters: dict[str, Any], expected: list[int]) -> None:
    assert ids(five_events.history(**filters)) == expected


def test_history_filters_are_parameters_not_sql(five_events: Journal) -> None:
    assert five_events.history(address="vm/a' OR '1'='1") == []
    assert len(five_events.history()) == 5


# -- --since -----------------------------------------------------------------------------

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize("text, expected", [
    ("30m", NOW - 1800), ("2h", NOW - 7200), ("7d", NOW - 7 * 86400), ("1w", NOW - 7 * 86400),
    ("90s", NOW - 90), ("1.5h", NOW - 5400), (" 2H ", NOW - 7200),
    ("2024-04-30T12:00:00+00:00", NOW - 86400), ("2024-04-30T12:00Z", NOW - 86400),
    ("2024-04-30", datetime.datetime(2024, 4, 30).timestamp()),  # local midnight, as the table shows
])
def test_parse_since(text: str, expected: float) -> None:
    assert history.parse_since(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "yesterday", "-5m", "5x", "2h ago", "2024-13-01"])
def test_parse_since_refuses_what_is_neither_a_duration_nor_a_date(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        history.parse_since(text, NOW)


# -- somnus history (no --search) ------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path, clock: FakeClock) -> Path:
    """A state directory whose journal holds four events of the last three hours."""
    now = time.time()
    journal = Journal(tmp_path / "journal.sqlite")
    record_at(journal, clock, now - 3 * 3600, "vm/coder-1", "create", "ok", "created (debian-12, 2 vcpu, 4Gi)")
    record_at(journal, clock, now - 3600, "vm/coder-1", "pack install web-development", "rolled back",
              DNS_FAILURE, "NETWORK_FAILURE")
    record_at(journal, clock, now - 1800, "container/box", "create", "ok", "created (image somnus/busybox)")
    record_at(journal, clock, now - 600, "vm/coder-1", "drift", "corrected", "memory set back to 8Gi")
    journal.close()
    return tmp_path


def test_table_lists_events_oldest_first_one_line_each(state_dir: Path) -> None:
    code, out, _ = run("--state-dir", str(state_dir))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["TIME", "ADDRESS", "ACTION", "OUTCOME", "MESSAGE"]
    assert [line.split("  ")[1].strip() for line in lines[1:]] == [
        "vm/coder-1", "vm/coder-1", "container/box", "vm/coder-1"]
    assert "rolled back" in lines[2] and "[NETWORK_FAILURE] task 'apt: install packages' failed" in lines[2]
    assert lines[4].split()[-6:] == ["corrected", "memory", "set", "back", "to", "8Gi"]


def test_limit_shows_the_newest_events_oldest_first(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMNUS_STATE_DIR", str(state_dir))
    code, out, _ = run("--limit", "2")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["container/box", "vm/coder-1"]


def test_json_items_with_iso_utc_times_and_filters(state_dir: Path) -> None:
    code, out, _ = run("--state-dir", str(state_dir), "-o", "json", "--object", "vm/coder-1", "--since", "2h")
    items = json.loads(out)["items"]
    assert code == 0
    assert [(i["id"], i["action"], i["outcome"]) for i in items] == [
        (2, "pack install web-development", "rolled back"), (4, "drift", "corrected")]
    assert set(items[0]) == {"id", "at", "address", "action", "outcome", "category", "message"}
    assert (items[0]["category"], items[0]["message"], items[1]["category"]) == ("NETWORK_FAILURE", DNS_FAILURE, None)
    at = datetime.datetime.fromisoformat(items[0]["at"])
    assert at.utcoffset() == datetime.timedelta(0)
    assert abs(at.timestamp() - (time.time() - 3600)) < 120


def test_outcome_and_short_kind_filters(state_dir: Path) -> None:
    code, out, _ = run("--state-dir", str(state_dir), "-o", "json", "--outcome", "ok", "--object", "Container/box")
    assert code == 0
    assert [(i["address"], i["outcome"]) for i in json.loads(out)["items"]] == [("container/box", "ok")]


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "error: --since: 'yesterday' is neither a duration"),
    (["--since", "2024-02-30"], "error: --since:"),
    (["--object", "coder-1"], "error: --object 'coder-1': give vm/NAME or container/NAME"),
    (["--object", "pack/web-development"], "error: --object"),
])
def test_bad_options_exit_2(state_dir: Path, args: list[str], message: str) -> None:
    code, out, err = run("--state-dir", str(state_dir), *args)
    assert (code, out) == (2, "")
    assert err.startswith(message)


def test_a_state_dir_without_a_journal_has_no_history_and_gets_none(tmp_path: Path) -> None:
    missing = tmp_path / "never-applied"
    assert run("--state-dir", str(missing)) == (0, "no events\n", "")
    assert run("--state-dir", str(missing), "-o", "json") == (0, '{\n  "items": []\n}\n', "")
    assert not missing.exists()


def test_history_without_search_imports_neither_chromadb_nor_torch(state_dir: Path) -> None:
    script = ("import sys; from somnus_reconciler.cli.commands import cli\n"
              f"cli(['history', '--state-dir', {str(state_dir)!r}], standalone_mode=False)\n"
              "loaded = {'chromadb', 'torch', 'sentence_transformers'} & set(sys.modules)\n"
              "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "drift" in done.stdout


def test_table_cuts_long_messages_to_the_width_on_one_line() -> None:
    long = Event(1, NOW, "vm/coder-1", "pack install x", "failed", "line one\n" + "word " * 100, "UNKNOWN")
    out = io.StringIO()
    history_view.HistoryTable(out, width=120).events([HistoryItem(long)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(len(line) <= 120 for line in lines)
    assert "[UNKNOWN] line one word word" in lines[1] and lines[1].endswith("...")


# -- semantic search: the real chromadb and the real model -------------------------------


@pytest.fixture(scope="module")
def model() -> Any:
    """One model load for the module (the classifier shares it)."""
    loaded = triage.load_embedding_model()
    triage.default_classifier().load()
    return loaded


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, model: Any) -> Path:
    """A state directory with the realistic journal above, indexed."""
    state = tmp_path_factory.mktemp("indexed")
    journal = Journal(state / "journal.sqlite")
    for event in EVENTS:
        journal.record(*event)
    assert history.HistoryIndex(state).sync(journal) == len(EVENTS)
    journal.close()
    return state


def search_json(state: Path, *args: str) -> list[dict[str, Any]]:
    code, out, err = run("--state-dir", str(state), "-o", "json", *args)
    assert code == 0, err
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_search_finds_the_dns_failure_from_a_paraphrase(indexed: Path) -> None:
    items = search_json(indexed, "--search", "the package mirror could not be reached by name")
    assert len(items) == 5
    assert "Temporary failure resolving 'deb.debian.org'" in items[0]["message"]
    assert items[0]["category"] == "NETWORK_FAILURE"
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] < scores[0] <= 1.25


@pytest.mark.parametrize("query, expected", [
    ("the volume filled up during the python dependency setup", "No space left on device"),
    ("graphics card software is outdated", "The NVIDIA driver on your system is too old"),
])
def test_search_finds_other_failures_from_paraphrases(indexed: Path, query: str, expected: str) -> None:
    [best, *_] = history.HistoryIndex(indexed).search(query)
    assert expected in best.entry.message


def test_search_table_shows_scores_first(indexed: Path) -> None:
    code, out, _ = run("--state-dir", str(indexed), "--search", "graphics card software is outdated", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split()[:2] == ["SCORE", "TIME"]
    assert "[CUDA_ERROR]" in lines[1] and float(lines[1].split()[0]) > float(lines[2].split()[0])


def test_search_respects_object_and_outcome(indexed: Path) -> None:
    items = search_json(indexed, "--search", "the package mirror could not be reached by name",
                        "--object", "vm/trainer-1", "--limit", "10")
    assert {item["address"] for item in items} == {"vm/trainer-1"} and len(items) == 5
    assert items[0]["message"].startswith("ssh: connect to host")  # the network failure of that VM
    retrying = search_json(indexed, "--search", "disk", "--outcome", "retrying")
    assert sorted(item["id"] for item in retrying) == [3, 27]  # both of them, however far their words


def test_sync_is_incremental_and_rebuild_indexes_everything(tmp_path: Path, model: Any) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    for event in EVENTS[:3]:
        journal.record(*event)
    index = history.HistoryIndex(tmp_path)
    assert (index.sync(journal), index.sync(journal), index.indexed_through) == (3, 0, 3)
    journal.record(*EVENTS[3])
    assert history.HistoryIndex(tmp_path).sync(journal) == 1  # another process would see the same mark
    assert (index.sync(journal), index.count(), index.indexed_through) == (0, 4, 4)
    assert index.rebuild(journal) == 4
    assert (index.count(), index.indexed_through, index.sync(journal)) == (4, 4, 0)
    assert (tmp_path / history.INDEX_DIR).stat().st_mode & 0o777 == 0o700
    journal.close()


def test_index_new_events_catches_up_and_makes_no_journal(tmp_path: Path, model: Any) -> None:
    assert history.index_new_events(tmp_path / "empty") == 0
    assert not (tmp_path / "empty").exists()
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record(*EVENTS[0])
    journal.close()
    assert (history.index_new_events(tmp_path), history.index_new_events(tmp_path)) == (1, 0)


def test_rebuild_index_says_how_many(indexed: Path) -> None:
    assert run("--state-dir", str(indexed), "--rebuild-index") == (0, f"indexed {len(EVENTS)} event(s)\n", "")
