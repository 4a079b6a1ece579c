"""Evaluation: the competition metric (:mod:`.metrics`), probability levels
(:mod:`.levels`) and the one threshold tuner (:mod:`.thresholds`), shared by training's
validation, prediction and the demo."""
