"""Writes `docs/weights.md` from the weights table: `python -m seglab.hub.docs [OUT]` (a test checks it is current)."""

from __future__ import annotations

import sys
from pathlib import Path

from seglab.hub.table import WeightsEntry, load_table

INTRO = """# Published weights

Generated from `src/seglab/hub/weights.yaml` by `python -m seglab.hub.docs`; do not edit by hand.
`seglab weights [PATTERN]` prints the same table with what is cached on this machine.

## In one line

```python
import seglab

model = seglab.create_model("segformer_b0", pretrained="ade20k-512")      # download, verify, convert, cache
model = seglab.create_model("segformer_b0", pretrained=True)              # the model's default row (marked *)
model = seglab.create_model("segformer_b0", pretrained="ade20k-512", num_classes=5)  # fine-tune: new classifier
model = seglab.create_model("upernet_swin_t", pretrained="imagenet", num_classes=150)  # ImageNet backbone only
result = seglab.Predictor("segformer_b0", pretrained="ade20k-512")("photo.jpg")   # published test pipeline
result.save("out/")                                                       # label PNG + overlay with a legend
model.save_pretrained("my-model/"); model.push_to_hub("me/my-model")      # config.json + model.safetensors + card
model = seglab.from_pretrained("me/my-model")                             # a folder or a Hub repo id
```

```bash
seglab weights 'segformer_*'
seglab predict --model segformer_b0 --pretrained ade20k-512 photo.jpg --out out/
seglab push work_dirs/run/best.safetensors me/my-model      # or --dir my-model/
seglab predict --from-pretrained me/my-model photo.jpg --out out/
```

In a run config, `model.pretrained: imagenet` starts the backbone from its ImageNet row (a file path still works)
and `model.init: ade20k-512` starts the whole model from a published row (another `model.num_classes` keeps all
but the classifier).

## How a file is fetched, checked and cached

- **Hub rows** go through `huggingface_hub.hf_hub_download`: `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` and the
  Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`) behave as in transformers. The Hub's LFS ETag is the file's
  SHA-256 and is checked.
- **URL rows** go through `torch.hub.download_url_to_file` (with a progress bar) into
  `$SEGLAB_HOME/downloads/` (default `~/.cache/seglab`). `SEGLAB_WEIGHTS_MIRROR=http://host:port/prefix`
  replaces the scheme and host of every URL and keeps its path, for mirrors and air-gapped sites.
- Every file is checked before it is read: an HTML page, an empty or truncated file (zip directory, safetensors
  header, pickle end) or a hash mismatch (the `sha256` / `md5` column: the publisher's, where the file name carries
  a valid one) is removed, and the error names the URL with the expected and actual hash. Files are read with
  `torch.load(weights_only=True)`, safetensors, `numpy.load(allow_pickle=False)`, or (detectron2 `.pkl`) an
  unpickler that builds numpy arrays and nothing else.
- The converted weights are cached as `$SEGLAB_HOME/weights/<model>/<tag>.safetensors`; later calls read that
  file and never touch the network. A file lock makes processes started together (torchrun) download once.
- **Offline** (`HF_HUB_OFFLINE=1` or `SEGLAB_OFFLINE=1`) with nothing cached, the error names the file and where
  to put it: `$SEGLAB_HOME/downloads/<file name>` for URL and manual rows,
  `$SEGLAB_HOME/downloads/hf/<repo>/<file>` for Hub rows. A file placed there is verified and used.
- **Manual rows** (Google Drive, OneDrive, Baidu, Tsinghua Cloud share pages) cannot be fetched by a program:
  `create_model` says which page to open and the file name to save as; the list is below.
"""


def _miou(entry: WeightsEntry) -> str:
    if entry.miou is None:
        return ""
    return f"{entry.miou:g}" + (f" / {entry.miou_ms:g}" if entry.miou_ms is not None else "")


def _source(entry: WeightsEntry) -> str:
    if entry.hub:
        return f"[{entry.hub.repo}](https://huggingface.co/{entry.hub.repo}) `{entry.hub.file}`"
    if entry.url:
        return f"[{entry.file_name}]({entry.url})"
    return f"manual: [{entry.manual['file']}]({entry.manual['page']})"


def _family(model: str) -> str:
    return model.rsplit("_", 1)[0] if not model.startswith(("segformer", "segnext")) else model.split("_")[0]


def render() -> str:
    table = load_table()
    lines = [INTRO]
    families: dict[str, list[WeightsEntry]] = {}
    for entry in table.entries:
        families.setdefault(_family(entry.model), []).append(entry)
    counts = {k: sum(1 for e in table.entries if e.fetch == k) for k in ("hub", "url", "manual")}
    lines.append(f"## The table\n\n{len(table.entries)} rows: {counts['hub']} on the Hugging Face Hub, {counts['url']}"
                 f" at direct URLs, {counts['manual']} manual. `*` marks the default row (`pretrained=True`). mIoU is"
                 f" the published single-scale / multi-scale figure.\n")
    for family, rows in families.items():
        lines += [f"### {family}\n", "| model | tag | dataset | crop | mIoU | source | convert | hash | licence |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in rows:
            crop = "x".join(map(str, e.crop)) if e.crop else ""
            digest = f"sha256 {e.sha256}" if e.sha256 else f"md5 {e.md5}" if e.md5 else ""
            lines.append(f"| {e.model} | {e.tag}{' *' if e.default else ''} | {e.dataset} | {crop} | {_miou(e)} | "
                         f"{_source(e)} | {e.convert} | {digest} | {e.licence} |")
        lines.append("")
    manual = [e for e in table.entries if e.fetch == "manual"]
    if manual:
        lines += ["## Manual downloads\n", "Open the page, download the file, and save it under "
                  "`$SEGLAB_HOME/downloads/` with the name given; the next `create_model` call verifies and "
                  "converts it.\n", "| model:tag | page | save as | how |", "|---|---|---|---|"]
        lines += [f"| {e.name} | {e.manual['page']} | `{e.manual['file']}` | {e.manual.get('how', '')} |"
                  for e in manual]
        lines.append("")
    if table.unpublished:
        lines += ["## Models without published weights\n", "| model | why |", "|---|---|"]
        lines += [f"| {u['model']} | {u['reason']} |" for u in table.unpublished]
        lines.append("")
    if table.omitted:
        lines += ["## Research rows not in the table\n",
                  "Published files found by the research (`../shared/design/weights.yaml`) that the table does not "
                  "offer, and why.\n", "| file | why |", "|---|---|"]
        lines += [f"| {o.get('research', '')} | {o.get('reason', '')} |" for o in table.omitted]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path("docs/weights.md")
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
