"""Using a trained network: evaluation, prediction, features, fast inference modes and export."""
