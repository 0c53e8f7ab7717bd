"""PyTorch training for cxr-triage: models, data, training loops and reports."""
