"""HRNet/HRNet-Semantic-Segmentation (branches HRNet-OCR @ 0bbb2880446ddff2d78f8dd7e8c4c610151d5a51 and
pytorch-v1.1 @ 88419ab18813f2c9193985e2d4d31d3d07abe839): HRNetV2 segmentation network, FullModel wrapper, configs."""
