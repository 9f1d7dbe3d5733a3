"""Signals of the training layer, in a module that imports nothing heavy (web processes load it at start-up)."""

from django.dispatch import Signal

#: Sent when a training run ends (done or failed); the round orchestration listens. kwargs: run.
run_finished = Signal()
