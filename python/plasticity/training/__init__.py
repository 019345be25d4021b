"""Online training of the served model: trainable views of vLLM's live weights (views),
context-frozen loss + live Apollo + the training loop (core), the [training] config (config)."""
