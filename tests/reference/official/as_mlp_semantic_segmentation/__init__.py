"""svip-lab/AS-MLP-Semantic-Segmentation @ c9838f92fae7090d9edc29d4fba7d55e078a91ac: the AS-MLP backbone of the
UperNet-AS-MLP segmentor (its heads are the Swin segmentation code's mmseg 0.11 heads)."""
