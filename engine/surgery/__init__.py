"""Model surgery: importance scoring, FFN pruning, hidden-size reduction, vocabulary trimming."""
