"""Published weights by name, and models that travel on the Hugging Face Hub.

- `table`: the weights table (`weights.yaml`): rows of (model, tag, source, hash, dataset, mIoU, test pipeline).
- `download`: fetching a row's file (Hub / direct URL / mirror), verification, the cache and its locks.
- `pretrained`: `create_model(name, pretrained=TAG)`: fetch, convert once, cache, load (or fine-tune).
- `sharing`: `from_pretrained(dir_or_repo_id)` (the models' own `save_pretrained` / `push_to_hub` write it).
- `predictor`: `Predictor(name, pretrained=TAG)(image)`.
"""
