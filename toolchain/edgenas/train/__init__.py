"""Training: the weight-sharing supernet (sandwich rule), BN re-calibration, early-exit head training, thresholds."""
