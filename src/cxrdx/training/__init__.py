"""Training: the loop (loop.py) and the helpers it calls (config, data, loss, augmentation, DDP, resume state)."""
