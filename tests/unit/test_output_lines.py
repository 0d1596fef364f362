"""testkit/output_lines.py: a line is found once it is printed, from `after` on; the
wait ends without one when the pipe closes or the deadline passes."""

from __future__ import annotations

import io
import json
import os

from testkit.output_lines import OutputLines


def test_the_first_matching_line_from_after_on_is_found_and_a_closed_pipe_ends_the_wait() -> None:
    lines = OutputLines(io.StringIO('{"n": 1}\n{"n": 2}\n{"n": 1}\n'), json.loads)
    assert lines.wait_for(lambda e: e["n"] == 1, 10) == 0
    assert lines.wait_for(lambda e: e["n"] == 1, 10, after=1) == 2
    assert lines.wait_for(lambda e: e["n"] == 3, 10) is None  # closed: no need to wait out the 10 s
    lines.join(timeout_s=10)
    assert lines.items == [{"n": 1}, {"n": 2}, {"n": 1}] and lines.mark() == 3


def test_a_line_printed_while_waiting_ends_the_wait_and_none_is_a_timeout() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as pipe, os.fdopen(write_end, "w") as writer:
        lines = OutputLines(pipe, str)
        assert lines.wait_for(lambda line: True, 0.2) is None
        writer.write("vm/a: create ...\n")
        writer.flush()
        assert lines.wait_for(lambda line: line.startswith("vm/a:"), 30) == 0
        writer.close()
        lines.join(timeout_s=10)
    assert lines.items == ["vm/a: create ...\n"]
