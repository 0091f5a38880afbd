"""Data: label tables (one reader per source format), lesion boxes, patient splits and leakage checks,
label statistics, the prepared image cache and the batch sources that feed training."""
