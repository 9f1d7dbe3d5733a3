"""What the reading room tells the rest of the app, without importing it.

`case_filled` is sent after the commit of the answer that gave a case its last planned read (`round_id`): the
rounds room listens (connected in `annotation.apps`) and lets the driver check whether labeling is complete. Two
answers filling the same case at once may both miss it; the reconciler's beat closes such a round."""

from django.dispatch import Signal

case_filled = Signal()
