"""zbwxp/SegVit @ 763137e687ab830dd4e7352b80ab27e54e0b07e4: the ATM heads, the Shrunk backbone and the mmseg 0.24 ViT
it builds on (see each module)."""
