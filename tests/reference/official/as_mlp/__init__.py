"""svip-lab/AS-MLP @ dd1eb4f768f46fdf7c8522fd535ea9e15f664fae: the ImageNet AS-MLP classifier."""
