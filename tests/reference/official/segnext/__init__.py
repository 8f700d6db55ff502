"""Visual-Attention-Network/SegNeXt @ c87bcaef22ed2ad72ed3decb3727e5f879343516: MSCAN and LightHamHead."""
