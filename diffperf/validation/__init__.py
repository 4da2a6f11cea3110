"""Layer 5: validation of the model against measured training and serving runs."""
