"""Spec against status (SPEC section 6): the balloon target is spec, what the guest's
balloon reports is status; waiting is bounded by what the VM's image promises.

Domain XML parsing, the MemoryAtTarget condition, the conditions of VMs whose image
carries no agent, the resource step's bounded settle (with a recording double of the
VM provider; the real libvirt runs in tests/integration/test_uncooperative_guests.py),
and admission of packs only on images that carry SSH.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from somnus_reconciler.engine.resource_step import ResourceSteps
from somnus_reconciler.images import vm_images
from somnus_reconciler.manifests import references
from somnus_reconciler.passes import status
from somnus_reconciler.planning.plan import Action, Change, Disruption
from somnus_reconciler.providers import domain_xml
from somnus_reconciler.values.actual import ActualVm, PowerState, VmMark
from somnus_reconciler.values.conditions import memory_at_target
from somnus_reconciler.values.desired import DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import InvalidInput, Source
from somnus_reconciler.values.outcome import Outcome
from tests.unit.test_references import pack, vm

MiB = 2**20
BLANK = "/var/lib/somnus/images/blank.qcow2"
RESOURCES = {"vcpus": 1, "memory": "256Mi"}


def _domain(current_mib: int, *, running: bool) -> str:
    domain_id = ' id="3"' if running else ""
    return (f'<domain type="qemu"{domain_id}><name>vm1</name><memory unit="KiB">{512 * 1024}</memory>'
            f'<currentMemory unit="KiB">{current_mib * 1024}</currentMemory>'
            '<vcpu placement="static" current="1">2</vcpu></domain>')


def test_the_target_comes_from_the_definition_and_the_balloon_from_the_live_xml() -> None:
    running = domain_xml.parse(_domain(512, running=True), definition=_domain(256, running=False))
    assert (running.memory, running.balloon, running.max_memory) == (256 * MiB, 512 * MiB, 512 * MiB)
    stopped = domain_xml.parse(_domain(256, running=False))
    assert (stopped.memory, stopped.balloon) == (256 * MiB, None)


def _actual(image: str, balloon: int | None, *, spec_hash: str = "h") -> ActualVm:
    power = PowerState.RUNNING if balloon is not None else PowerState.SHUTOFF
    return ActualVm("vm1", power, 3 if balloon is not None else None, 1, 2, 256 * MiB, 512 * MiB,
                    VmMark(spec_hash, image, 2**30, "debian"), balloon=balloon)


@pytest.mark.parametrize(("balloon", "driver", "expected"), [
    (256 * MiB, False, (True, "guest reports 256Mi of 256Mi requested")),
    (512 * MiB, False, (False, "guest reports 512Mi of 256Mi requested; no balloon driver?")),
    (300 * MiB, True, (False, "guest reports 300Mi of 256Mi requested; its balloon driver has not got there (yet)")),
])
def test_memory_at_target_says_what_the_guest_made_of_the_target(
        balloon: int, driver: bool, expected: tuple[bool, str]) -> None:
    condition = memory_at_target(_actual(BLANK, balloon), balloon_driver=driver)
    assert condition is not None and (condition.status, condition.message) == expected


def test_a_vm_that_is_not_running_has_no_memory_condition() -> None:
    assert memory_at_target(_actual(BLANK, None), balloon_driver=True) is None


def _conditions(vm: ActualVm) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.message) for c in status.vm_status(vm, None).conditions}


def test_a_vm_whose_image_carries_no_agent_is_ready_when_running_and_no_agent_is_expected() -> None:
    conditions = _conditions(_actual(BLANK, 512 * MiB))
    assert "AgentConnected" not in conditions
    assert conditions["Ready"] == (True, f"running; image {BLANK} carries no agent to ask")
    assert conditions["MemoryAtTarget"] == (False, "guest reports 512Mi of 256Mi requested; no balloon driver?")
    stopped = _conditions(_actual("tiny-linux", None))
    assert stopped["Ready"] == (False, "the VM is not running") and "MemoryAtTarget" not in stopped


def test_a_debian_vm_still_expects_its_agent() -> None:
    conditions = _conditions(_actual("debian-12", 256 * MiB))
    assert conditions["AgentConnected"] == (False, "the agent was not asked")
    assert conditions["MemoryAtTarget"][0] is True


@pytest.mark.parametrize(("image", "services"), [
    ("debian-12", vm_images.GuestServices(balloon=True, agent=True, ssh=True)),
    ("tiny-linux", vm_images.GuestServices(balloon=True)),
    (BLANK, vm_images.GuestServices()),
])
def test_each_image_promises_only_what_it_carries(image: str, services: vm_images.GuestServices) -> None:
    assert vm_images.guest_services(image) == services


class Guest:
    """A VM provider double whose guest's balloon moves to the target after `deflates_after` observations
    (never when None); it records the calls that act."""

    def __init__(self, image: str, deflates_after: int | None) -> None:
        self.image, self.deflates_after = image, deflates_after
        self.spec_hash = _want(image).spec_hash
        self.observed = 0
        self.calls: list[str] = []

    def observe_one(self, name: str) -> ActualVm:
        self.observed += 1
        reached = self.deflates_after is not None and self.observed > self.deflates_after
        return _actual(self.image, 256 * MiB if reached else 512 * MiB, spec_hash=self.spec_hash)

    def resize_live(self, vm: DesiredVm) -> None:
        self.calls.append("resize_live")

    def write_mark(self, vm: DesiredVm) -> None:
        self.calls.append("write_mark")


def _want(image: str) -> DesiredVm:
    return DesiredVm("vm1", VmResources(1, 256 * MiB, 2, 512 * MiB), image, 2**30, "debian", True, (), 3,
                     None, None, Source(Path("m.yaml"), 1))


def _live_change(image: str) -> Change:
    want = _want(image)
    return Change(want.address, Action.UPDATE, Disruption.LIVE, desired=want)


def _steps(guest: Guest, patience_s: float) -> ResourceSteps:
    return ResourceSteps(guest, None, verify_timeout_s=patience_s, boot_timeout_s=patience_s)  # type: ignore[arg-type]


def test_a_guest_without_a_balloon_driver_is_not_waited_for_and_the_step_succeeds() -> None:
    guest = Guest(BLANK, deflates_after=None)
    lines: list[str] = []
    started = time.monotonic()
    attempt = _steps(guest, patience_s=30.0).attempt(_live_change(BLANK), lines.append)
    assert time.monotonic() - started < 5.0  # one look, no 30 s wait
    assert guest.calls == ["resize_live", "write_mark"]
    assert attempt.outcome is Outcome.OK
    assert lines == ["MemoryAtTarget False: guest reports 512Mi of 256Mi requested; no balloon driver?"]
    assert attempt.message == f"done; {lines[0]}"


def test_a_guest_with_a_balloon_driver_is_waited_for_until_it_reaches_the_target() -> None:
    guest = Guest("tiny-linux", deflates_after=3)
    lines: list[str] = []
    attempt = _steps(guest, patience_s=60.0).attempt(_live_change("tiny-linux"), lines.append)
    assert attempt.outcome is Outcome.OK and guest.observed > 3
    assert lines == ["MemoryAtTarget True: guest reports 256Mi of 256Mi requested"]


def test_the_wait_for_a_balloon_driver_is_bounded_and_never_fails_the_step() -> None:
    guest = Guest("tiny-linux", deflates_after=None)
    lines: list[str] = []
    attempt = _steps(guest, patience_s=1.0).attempt(_live_change("tiny-linux"), lines.append)
    assert attempt.outcome is Outcome.OK
    assert lines == ["MemoryAtTarget False: guest reports 512Mi of 256Mi requested; "
                     "its balloon driver has not got there (yet)"]


@pytest.mark.parametrize("image", ["tiny-linux", BLANK])
def test_packs_are_refused_on_a_vm_whose_image_carries_no_ssh(image: str) -> None:
    declared = [pack("tools"), vm("a", image=image, packs=["tools"], resources=RESOURCES, line=12)]
    with pytest.raises(InvalidInput) as caught:
        references.resolve(declared, images_dir=Path("/var/lib/somnus/images"))
    assert [str(d) for d in caught.value.diagnostics] == [
        f"m.yaml:12: vm/a: spec.packs: image {image!r} carries no SSH server that takes somnus's key, "
        "so no pack can be installed in it (packs need a VM of debian-12, or a container)"]


def test_packs_are_admitted_on_debian() -> None:
    state = references.resolve([pack("tools"), vm("a", packs=["tools"], resources=RESOURCES)])
    assert state.vms["a"].packs == ("tools",)
