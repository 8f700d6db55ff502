"""Tools around the models: FLOPs and parameter counts, visualisation (palettes, overlays, training curves)."""
