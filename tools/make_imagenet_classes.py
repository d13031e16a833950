"""Write zoo/imagenet_classes.json: the 1000 ImageNet-1k classes in their standard index order.

Why: `mhmodels.decode_predictions` must name classes without a download. Two Apache-2.0
packages on PyPI ship the pieces: tensorflow-datasets has the synset ids in index order
(`tensorflow_datasets/datasets/imagenet2012/labels.txt`), timm has the WordNet lemmas of every
synset (`timm/data/_info/imagenet_synset_to_lemma.txt`). `classes[i]` is `[synset, lemmas]` of
class i; the short name is the first lemma. JSON, so the packaging of zoo/*.json ships it.

    pip download timm==1.0.31 --no-deps -d /tmp/timm   # a 2.5 MB wheel; nothing is installed
    python tools/make_imagenet_classes.py --timm_wheel=/tmp/timm/timm-1.0.31-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

SOURCE = ("ImageNet-1k classes in index order as [WordNet synset, lemmas]. Synsets: "
          "tensorflow-datasets imagenet2012/labels.txt; lemmas: timm "
          "data/_info/imagenet_synset_to_lemma.txt (both Apache-2.0). Made by "
          "tools/make_imagenet_classes.py.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm_wheel", required=True)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "zoo"
                                             / "imagenet_classes.json"))
    args = parser.parse_args()
    import tensorflow_datasets as tfds

    labels = Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt"
    synsets = labels.read_text().split()
    with zipfile.ZipFile(args.timm_wheel) as wheel:
        lemma_text = wheel.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode("utf8")
    lemmas = dict(line.split("\t", 1) for line in lemma_text.splitlines() if "\t" in line)
    assert len(synsets) == 1000 and len(set(synsets)) == 1000, len(synsets)
    rows = [[s, lemmas[s].strip()] for s in synsets]
    text = ('{\n"source": ' + json.dumps(SOURCE) + ',\n"classes": [\n'
            + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]}")
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} classes to {args.out}")


if __name__ == "__main__":
    main()
