"""Statistics for the study report: metrics and uncertainty intervals (numpy, scipy, sklearn; no torch)."""
