"""One validation pass: sharded over processes, the loss all-reduced, the outputs gathered for AUROC.

Under DDP the shards differ in length (25 images on 2 processes: 13 and 12, so one
process may run one batch more), and every forward of the DDP wrapper may take part
in a collective (its buffer broadcast): an unmatched call can hang NCCL. Validation
therefore runs the *unwrapped* module, whose forward talks to nobody; the only
collectives are the loss all-reduce and the gather, once each, after the loop.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrdx.training.data import to_input
from cxrdx.training.distributed import all_mean


@torch.no_grad()
def validate(net, model, loader, criterion, pre, device, memory_format, amp_dtype, cfg, world):
    """(val loss over all processes, probabilities, labels): the loss is the exact mean over the split.

    ``net`` is what training calls (DDP- and/or compile-wrapped); with one process it is used here
    too (a compiled graph is faster), with several the unwrapped ``model`` is (module doc)."""
    forward = net if world == 1 else model
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    probs, labels = [], []
    for squares, targets in loader:
        x = to_input(squares, pre, device, memory_format, None, cfg, train=False)
        y = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = forward(x)
        loss_sum += criterion(logits, y).double().sum()
        count += len(y)
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(targets.numpy())
    n_out = model.class_layers.out.out_features if hasattr(model, "class_layers") else 0
    probs_np = np.concatenate(probs) if probs else np.zeros((0, n_out), np.float32)
    labels_np = np.concatenate(labels) if labels else np.zeros((0, n_out), np.float32)
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (probs_np, labels_np))
        probs_np = np.concatenate([g[0] for g in gathered])
        labels_np = np.concatenate([g[1] for g in gathered])
    return all_mean(loss_sum, count, device, world), probs_np, labels_np
