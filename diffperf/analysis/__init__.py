"""Layer 3: analyses over the model: sensitivity, sweeps, optimization, calibration."""
