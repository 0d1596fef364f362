"""testkit: harnesses that both the tests (tests/) and the benchmarks (bench/) drive.

Not part of the installed package (pyproject.toml packages only somnus_reconciler);
it is imported from a checkout, with the repository root on sys.path. Nothing in
somnus_reconciler imports it.

- `agent_process`: the in-guest agent run for real on loopback (`running_agent`).
- `apt_repo`: a hermetic apt repository (.deb packages built with dpkg-deb) and the
  playbook that makes it a guest's only apt source.
- `crash_trials`: SIGKILL `somnus apply` at random moments, then check the next
  apply recovers.
- `fuzz_manifests` (hypothesis strategies that break manifests) and `fuzz_check`
  (load each as `somnus validate` does, judge how it ended, `run_fuzz` for reports).
- `hostile_cases`: hostile manifests, each with the message that refuses it.
"""
