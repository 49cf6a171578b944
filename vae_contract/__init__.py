"""What the trainer and the service agree on, written once and torch-free.

- `manifest`: the schema of `manifest.json`, the self-description of a model version;
- `likelihood`: log p(x|z) and the pixel means of each likelihood, in numpy;
- `bounds`: reparameterize, the closed-form KL, the importance-weighted bound;
- `scores`: the anomaly scores, their calibration, thresholds and percentiles.
- `calibration`: how many held-out images a threshold needs, and why one is withheld;
- `images`: the decode rule, file -> pixels (orientation, bit depth, alpha, crop,
  resize, channels), for the trainer's loaders and the service alike.

docs/manifest.md states the same contract in words. The service (`app/`) and the
trainer (`trainer/`) both import this package; it imports neither of them.
"""
