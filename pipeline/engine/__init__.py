"""The nightly data engine: label what changed, select training data, fine-tune, gate, promote."""
