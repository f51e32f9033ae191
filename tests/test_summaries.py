"""The reliability suites' summary lines (issue 15, defect 7): a suite's summary comes out of any
subset of its tests run on its own, and a test run writes nothing into the repository; only
scripts/reliability_report.py collects the lines, in a folder it names."""

import os
import subprocess
import sys

from conftest import ROOT
from harness import SUMMARY_DIR_ENV, write_summary


def _tree(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*")) if folder.exists() else None


def test_one_threads_test_alone_passes_and_leaves_the_repository_alone(tmp_path):
    before = _tree(ROOT / "out")
    env = {**os.environ, SUMMARY_DIR_ENV: str(tmp_path / "summaries"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "tests/test_threads.py", "-k", "detector"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 passed" in proc.stdout and "failed" not in proc.stdout
    line = (tmp_path / "summaries" / "threads.txt").read_text()
    assert line.startswith("THREADS SUMMARY: main.handler, detector: ") and line.count("\n") == 1
    assert "THREADS SUMMARY" in proc.stdout
    assert _tree(ROOT / "out") == before


def test_without_the_variable_a_summary_is_printed_not_written(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(SUMMARY_DIR_ENV, raising=False)
    before = _tree(ROOT / "out")
    write_summary("probe", "PROBE SUMMARY: 1 thing")
    assert "PROBE SUMMARY: 1 thing" in capsys.readouterr().out
    assert _tree(ROOT / "out") == before and not (ROOT / "out" / "reliability" / "probe.txt").exists()
    monkeypatch.setenv(SUMMARY_DIR_ENV, str(tmp_path / "s"))
    write_summary("probe", "PROBE SUMMARY: 2 things")
    assert (tmp_path / "s" / "probe.txt").read_text() == "PROBE SUMMARY: 2 things\n"
