"""The papers' analyses as library functions (the `seglab analyze` commands call them):

- `erf`: effective receptive fields of each backbone stage and of the head (Luo et al. 2016, SegFormer Fig. 3);
- `resolution`: mIoU as the test size moves away from the training size (SegFormer Table 1c);
- `corruptions` + `robustness`: ImageNet-C corruptions at five severities and mIoU under them (SegFormer Table 6);
- `errors`: confusion matrix, per-class IoU, worst images and boundary-band (trimap) accuracy;
- `report`: self-contained HTML reports; `subject`: a model with its config, checkpoint digest and data.
"""
