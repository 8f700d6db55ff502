"""facebookresearch/MaskFormer @ da3e60d85fdeedcb31476b5edd7d328826ce56cc (with the detectron2 parts it builds on,
facebookresearch/detectron2 @ 02b5c4e295e990042a714712c21dc79b731e8833): the semantic-segmentation MaskFormer with
the detectron2 ResNet or the Swin backbone (see each module)."""
