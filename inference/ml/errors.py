class WeightsError(RuntimeError):
    """Model weights are missing, corrupt or do not fit the expected architecture. The message says which path."""
