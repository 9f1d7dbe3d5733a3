"""Signals of the inference layer, in a module that imports nothing heavy (web processes load it at start-up)."""

from django.dispatch import Signal

#: Sent when a generation batch finishes (status done or failed); the layers above listen. kwargs: batch.
batch_finished = Signal()
