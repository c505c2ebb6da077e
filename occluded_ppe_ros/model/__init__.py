"""The network (PyTorch): backbone+FPN, attention, detection/mask heads, pose stage, domain classifier."""
