"""Paper-scale reproduction: the GPU grid runner, its packing, and the published (compact) form of finished runs."""
