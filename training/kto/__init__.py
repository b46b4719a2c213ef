"""Prospect's KTO engine: paper-exact loss, a fast trainer, the offline demo model.

Pure PyTorch / transformers / peft / accelerate; imports nothing from Django. Entry point:
``python -m training.kto {train,evaluate,generate,demo-model}``. See INTERFACE.md.
"""
