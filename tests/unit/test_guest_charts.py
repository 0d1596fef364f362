"""The object page's charts: an hour of samples kept per VM, and drawn in its box."""

from __future__ import annotations

from somnus_reconciler.web.charts import HEIGHT, WIDTH, charts
from somnus_reconciler.web.guest_samples import GuestSamples, Sample

GIB = 2**30


def sample(at: float, cpu: float = 50.0, load: float = 0.5) -> Sample:
    return Sample(at, cpu, memory_used=GIB // 4, memory_total=GIB, disk_used=3 * GIB, disk_total=4 * GIB, load_1m=load)


def test_only_the_last_hour_is_kept() -> None:
    now = [4700.0]
    kept = GuestSamples(dashboard=None, window_s=3600.0, clock=lambda: now[0])  # type: ignore[arg-type]
    for at in (0.0, 1000.0, 3000.0, 3601.0, 4700.0):
        kept.record("dev", sample(at))
    assert [s.at for s in kept.series("dev")] == [3000.0, 3601.0, 4700.0]
    now[0] = 8000.0  # the VM was asked no more: what it said more than an hour ago is not shown
    assert [s.at for s in kept.series("dev")] == [4700.0]
    assert kept.series("other") == ()


def test_each_figure_is_placed_by_its_time_and_its_share_of_the_top() -> None:
    drawn = {c.key: c for c in charts([sample(0.0, cpu=0.0), sample(1800.0, cpu=100.0, load=2.5)], now=3600.0)}
    assert drawn["cpu"].points == f"0.0,{HEIGHT:.1f} {WIDTH / 2:.1f},0.0"
    assert drawn["cpu"].latest == "100 %" and drawn["cpu"].top == "100 %"
    assert drawn["memory"].latest == "256.0Mi of 1.0Gi (25 %)"
    assert drawn["disk"].points.split()[0] == f"0.0,{HEIGHT * 0.25:.1f}"
    assert drawn["load"].top == "3" and drawn["load"].latest == "2.50"  # the top follows the highest load
    assert {c.count for c in drawn.values()} == {2}


def test_no_samples_draw_nothing() -> None:
    assert {(c.points, c.latest, c.count) for c in charts([], now=10.0)} == {("", "", 0)}
