"""Evaluation: predictions on a labelled set, metrics with patient-bootstrap CIs, plots and the HTML report."""
