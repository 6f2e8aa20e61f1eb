"""Landmark network pretraining (issue 10): losses and metrics so far."""
