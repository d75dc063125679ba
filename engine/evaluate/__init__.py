"""Downstream evaluation: fine-tune a model on a task, score it, aggregate over seeds."""
