"""Synthetic frontal chest radiograph phantoms: the built-in dataset with known truth.

Real labelled chest films cannot ship with the project, yet every stage (training,
evaluation, Grad-CAM localisation, leakage checks) needs data whose labels and
lesion boxes are *exactly* known. A phantom is drawn from an anatomy (body outline,
dark lung fields, mediastinum, heart, diaphragm domes, spine, clavicles, ribs) plus
lesions whose geometry carries the finding (a cardiothoracic ratio above 0.5, a
meniscus at a costophrenic angle, a lung edge with no markings beyond it, ...).
Labels are what was drawn, and every drawn lesion has a box where it was drawn.

Drawing is vectorised numpy on small windows, so one core makes a few hundred
256-px phantoms per second. Each image has its own seed (``[seed, kind, index]``),
so the bytes do not depend on ``--workers``. A patient's follow-ups share one
anatomy with small jitter and, often, the same chronic findings, so a split that
leaks a patient across train and test is rewarded as it would be with real data.
"""
