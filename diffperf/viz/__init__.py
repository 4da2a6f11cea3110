"""Layer 5: matplotlib figures (tornado, breakdown bars, rooflines)."""
