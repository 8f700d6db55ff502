"""fudan-zvg/SETR @ 1361561ffde90e07ed1b4f9cdbc10b88ce27e2f3: the ViT / ViT-MLA encoders and the Naive, PUP and MLA
heads of the original SETR code (see each module)."""
