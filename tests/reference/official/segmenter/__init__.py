"""rstrudel/segmenter @ 20d1bfad354165ee45c3f65972a4d9c131f58d53: the ViT encoder, the linear and mask-transformer
decoders and the `Segmenter` wrapper of the official code (see each module)."""
