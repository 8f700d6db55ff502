"""SwinTransformer/Swin-Transformer-Semantic-Segmentation @ 87e6f90577435c94f3e92c7db1d36edc234d91f6: the Swin
backbone and the mmseg 0.11 UperNet heads (UPerHead with PPM, FCNHead) the repository ships."""
