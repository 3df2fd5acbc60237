"""Forward Super-Resolution (Allen-Zhu and Li, ICLR 2023) as a plugin of the training loop.

Attached to the host only through training/hooks.py (TrainingPlugin) and the public network API
(G.synthesis(ws, return_features=True)). See ../shared/docs/FSR.md for the model and the measurements.
"""
