"""Step-time models: given one iteration's batch, how long it takes and what bound it."""
