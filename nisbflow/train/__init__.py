"""Training: BANIS affinity crops from NISB seeds (more to come: augmentations, the DDP loop)."""
