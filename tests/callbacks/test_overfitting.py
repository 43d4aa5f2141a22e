"""The overfitting monitor warns on a rising validation loss under a falling training loss, and on a gap."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from prunelight.callbacks.overfitting import MonitorSettings, OverfittingMonitor
from prunelight.errors import ConfigError


def _run(monitor: OverfittingMonitor, curve: list[tuple[list[float], float]]) -> None:
    """Feed (training losses since the last validation, validation loss) pairs as Lightning would."""
    module = SimpleNamespace(last_train_loss=None)
    step = 0
    for train_losses, val_loss in curve:
        for loss in train_losses:
            module.last_train_loss = loss
            step += 1
            monitor.on_train_batch_end(None, module, None, None, 0)
        trainer = SimpleNamespace(
            sanity_checking=False,
            callback_metrics={"val/loss": torch.tensor(val_loss)},
            global_step=step,
            logger=None,
            is_global_zero=True,
        )
        monitor.on_validation_end(trainer, module)


def test_a_healthy_run_gets_no_warning_and_its_history():
    monitor = OverfittingMonitor(MonitorSettings(patience=2, max_gap=0.5))
    _run(monitor, [([3.0, 2.8], 2.9), ([2.6, 2.4], 2.7), ([2.3, 2.2], 2.5)])
    report = monitor.report()
    assert report["verdict"] == "no overfitting detected" and not report["warnings"]
    assert [e["step"] for e in report["history"]] == [2, 4, 6]
    assert report["history"][1]["train_loss"] == pytest.approx(2.5)
    assert report["history"][1]["gap"] == pytest.approx(0.2)
    assert report["best"]["val_loss"] == pytest.approx(2.5)


def test_rising_validation_under_falling_training_loss_warns_after_patience(tmp_path):
    path = tmp_path / "analysis" / "overfitting.json"
    monitor = OverfittingMonitor(MonitorSettings(patience=2, max_gap=10.0), path)
    with pytest.warns(UserWarning, match="rose for 2 validations"):
        _run(monitor, [([3.0], 2.5), ([2.5], 2.6), ([2.0], 2.7)])
    written = json.loads(path.read_text())
    assert written["verdict"] == "overfitting"
    assert [w["kind"] for w in written["warnings"]] == ["trend"]


def test_one_rise_within_patience_does_not_warn():
    monitor = OverfittingMonitor(MonitorSettings(patience=2, max_gap=10.0))
    _run(monitor, [([3.0], 2.5), ([2.5], 2.6), ([2.0], 2.55)])
    assert not monitor.warnings


def test_rising_validation_with_rising_training_loss_is_not_overfitting():
    monitor = OverfittingMonitor(MonitorSettings(patience=1, max_gap=10.0))
    _run(monitor, [([2.0], 2.5), ([2.2], 2.6)])
    assert not monitor.warnings


def test_a_large_gap_warns_once():
    monitor = OverfittingMonitor(MonitorSettings(patience=5, max_gap=0.3))
    with pytest.warns(UserWarning, match="nats above the training loss"):
        _run(monitor, [([2.0], 2.1), ([1.5], 2.0), ([1.2], 2.0)])
    assert [w["kind"] for w in monitor.warnings] == ["gap"]
    assert monitor.warnings[0]["step"] == 2


def test_bad_patience_is_rejected():
    with pytest.raises(ConfigError, match="patience"):
        MonitorSettings(patience=0)
