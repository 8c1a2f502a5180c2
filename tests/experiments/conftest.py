from pathlib import Path

import pytest

from attnres.experiments import compare


@pytest.fixture
def trained_runs(monkeypatch, tmp_path):
    """Records every run folder that `compare.run_arm` trains from now on, relative to
    `tmp_path / "runs"` where it lies below (else absolute); clear the list to start afresh."""
    trained: list[str] = []
    real_run_arm = compare.run_arm

    def counting_run_arm(cfg, run_dir, **kw):
        run_dir = Path(run_dir)
        where = run_dir.relative_to(tmp_path / "runs") if run_dir.is_relative_to(tmp_path / "runs") else run_dir
        trained.append(where.as_posix())
        return real_run_arm(cfg, run_dir, **kw)

    monkeypatch.setattr(compare, "run_arm", counting_run_arm)
    return trained
