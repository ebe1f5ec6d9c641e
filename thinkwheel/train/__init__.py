"""Retraining stages: cold-start SFT, GRPO with verifier rewards, and held-out evaluation.

Heavy libraries (torch, transformers, trl, unsloth) are imported inside the functions, so
importing this package stays cheap and Unsloth can patch TRL before TRL is first loaded.
"""
