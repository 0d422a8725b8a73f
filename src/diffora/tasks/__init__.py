"""Tasks: the registry, data readers, batching, metrics and model loading. Nothing here knows the method."""
