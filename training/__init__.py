"""The training package, imported as `occluded_ppe_training`.

Datasets, losses, the two-stage trainer and the paper's evaluations. The node never imports it; it
imports the network from occluded_ppe_ros.
"""
