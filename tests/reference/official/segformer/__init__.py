"""NVlabs/SegFormer @ 65fa8cfa9b52b6ee7e8897a98705abf8570f9e32: MiT encoder and All-MLP head (see each module)."""
