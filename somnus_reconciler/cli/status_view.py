"""`somnus get`: objects' status as a kubectl-like table, as JSON or as YAML.

The JSON view maps the typed status values (`passes.status`) to the documented
shape (docs/output.md: camelCase keys, sizes in bytes, conditions with
"True"/"False"); YAML has the same shape. `describe` is `describe_view`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from somnus_reconciler.cli import views
from somnus_reconciler.cli.views import JsonValue
from somnus_reconciler.passes.agent_health import AgentHealth, AgentReport, AgentStats
from somnus_reconciler.passes.backup_schedule import BackupStatus
from somnus_reconciler.passes.status import ContainerStatus, ObjectStatus, VmStatus
from somnus_reconciler.values.conditions import Condition
from somnus_reconciler.values.quantity import format_bytes

STATUS_COLUMNS = ("KIND", "NAME", "STATE", "READY", "VCPUS", "MEMORY", "MANAGED", "DETAIL")


class StatusTable(views.View):
    def objects(self, found: Sequence[ObjectStatus]) -> None:
        """Plain aligned columns: no colours, easy to grep."""
        cells = [STATUS_COLUMNS, *(_table_row(s) for s in found)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(STATUS_COLUMNS))]
        for row in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(),
                  file=self._out or sys.stdout)


class StatusJson(views.View):
    def objects(self, found: Sequence[ObjectStatus]) -> None:
        self.json({"items": [status_json(s) for s in found]})


class StatusYaml(views.View):
    def objects(self, found: Sequence[ObjectStatus]) -> None:
        import yaml

        self.echo(yaml.safe_dump({"items": [status_json(s) for s in found]}, sort_keys=False), nl=False)


def for_output(output: str) -> StatusTable | StatusJson | StatusYaml:
    """`table`, `json` or `yaml`."""
    if output == "json":
        return StatusJson()
    return StatusYaml() if output == "yaml" else StatusTable()


def _table_row(status: ObjectStatus) -> tuple[str, ...]:
    conditions = {c.type: c.status for c in status.conditions}
    ready = conditions.get("Ready", conditions.get("Running"))
    if isinstance(status, VmStatus):
        return ("vm", status.name, status.state.value, _true_false(ready).lower(), str(status.vcpus),
                format_bytes(status.memory) if status.memory else "", "yes" if status.managed else "no",
                " ".join(f"{f.name}={f.address}" for f in status.forwards))
    return ("container", status.name, status.state, _true_false(ready).lower(), "", "",
            "yes" if status.managed else "no", f"image={status.image}")


def _true_false(status: bool | None) -> str:
    """A condition's status as Kubernetes writes it; "" for a condition not there."""
    return "" if status is None else str(status)


# -- the JSON shape (docs/output.md) --------------------------------------------------
def status_json(status: ObjectStatus) -> dict[str, JsonValue]:
    return vm_json(status) if isinstance(status, VmStatus) else container_json(status)


def vm_json(vm: VmStatus) -> dict[str, JsonValue]:
    return {
        "kind": "vm",
        "name": vm.name,
        "managed": vm.managed,
        "state": vm.state.value,
        "domainId": vm.domain_id,
        "vcpus": vm.vcpus,
        "maxVcpus": vm.max_vcpus,
        "memory": vm.memory,
        "maxMemory": vm.max_memory,
        "balloon": vm.balloon,
        "image": vm.image,
        "owner": vm.owner,
        "forwards": {f.name: f.address for f in vm.forwards},
        "consoleLog": vm.console_log,
        "agent": agent_json(vm.agent) if vm.agent is not None else None,
        "conditions": [condition_json(c) for c in vm.conditions],
        **({"revision": vm.revision} if vm.revision else {}),
        **({"backup": backup_status_json(vm.backup)} if vm.backup else {}),
    }


def backup_status_json(backup: BackupStatus) -> dict[str, JsonValue]:
    policy = backup.policy
    last = backup.last
    return {
        "last": last.name if last else None, "lastAt": last.at if last else None,
        "lastLevel": last.level if last else None, "nextDue": backup.next_due,
        "schedule": policy.schedule if policy else None, "retain": policy.retain if policy else None,
        "maxAge": policy.max_age if policy else None, "dir": policy.dir if policy else None,
    }


def container_json(container: ContainerStatus) -> dict[str, JsonValue]:
    return {
        "kind": "container",
        "name": container.name,
        "managed": container.managed,
        "state": container.state,
        "image": container.image,
        "id": container.container_id,
        "conditions": [condition_json(c) for c in container.conditions],
        **({"revision": container.revision} if container.revision else {}),
    }


def condition_json(condition: Condition) -> dict[str, JsonValue]:
    shape: dict[str, JsonValue] = {"type": condition.type, "status": _true_false(condition.status), "message": condition.message}
    if condition.reason:
        shape["reason"] = condition.reason
    return shape


def agent_json(agent: AgentHealth) -> dict[str, JsonValue]:
    """{address, connected, ok, version, processes, stats[, recentErrors]}; `message` says why not connected."""
    return {
        "address": agent.address,
        "connected": agent.connected,
        **(_report_json(agent.report) if agent.report is not None else {}),
        **({} if agent.connected else {"message": agent.message}),
    }


def _report_json(report: AgentReport) -> dict[str, JsonValue]:
    shape: dict[str, JsonValue] = {
        "ok": report.ok,
        "version": report.version,
        "processes": [{"name": p.name, "pid": p.pid, "running": p.running} for p in report.processes],
        "stats": _stats_json(report.stats),
    }
    if report.recent_errors is not None:
        shape["recentErrors"] = [{"file": e.file, "line": e.line, "text": e.text, "category": e.category}
                                 for e in report.recent_errors]
    return shape


def _stats_json(stats: AgentStats) -> dict[str, JsonValue]:
    """As the agent sends them (`GET /stats/basic`): its own snake_case keys."""
    memory, disk, load = stats.memory, stats.disk, stats.load
    return {
        "cpu_percent": stats.cpu_percent,
        "memory": {"total": memory.total, "used": memory.used, "available": memory.available},
        "disk": {"path": disk.path, "total": disk.total, "used": disk.used, "free": disk.free},
        "load": {"1m": load.one_minute, "5m": load.five_minutes, "15m": load.fifteen_minutes},
        "uptime_s": stats.uptime_s,
        "source": stats.source,
    }
