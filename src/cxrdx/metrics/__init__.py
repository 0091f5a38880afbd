"""Metrics: AUROC with the patient bootstrap, thresholds, calibration (numpy only, no model)."""
