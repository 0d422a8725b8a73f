"""The method: candidate modules, LoRA wrapping, gates, search strategies, scores, selection, the DAM."""
