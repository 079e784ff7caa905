"""Write a label-scarce word-order task (``ordered``/``shuffled`` lines, :func:`jaxseq.data.labels.word_order_examples`)
from the paragraphs a masked-LM run holds out, so fine-tuning never sees text the encoder was pretrained on.

    python experiments/word_order_tsv.py TEXT OUT_DIR --train 300 --valid 1000 [--sentences line]
      -> OUT_DIR/train.tsv, OUT_DIR/valid.tsv (disjoint sentences; d2l-preprocessed words;
      the validation examples are the same for every --train)
"""

import argparse
from pathlib import Path

from jaxseq.data import corpora
from jaxseq.data.labels import word_order_examples
from jaxseq.data.mlm import split_sentences
from jaxseq.data.text import preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--valid", type=int, default=1000)
    ap.add_argument("--sentences", default="line", choices=("line", "punct"))
    ap.add_argument("--valid-fraction", type=float, default=0.1, help="as the pretraining run's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    text, _ = corpora.load_text(args.text)
    paragraphs = split_sentences(text, args.sentences)
    held_out = paragraphs[len(paragraphs) - int(round(len(paragraphs) * args.valid_fraction)):]
    sentences = [preprocess(s, "d2l").split() for para in held_out for s in para]
    examples = word_order_examples(sentences, args.seed, args.train + args.valid)
    if len(examples) < args.train + args.valid:
        raise SystemExit(f"only {len(examples)} usable sentences in the held-out paragraphs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # validation first: the same --valid examples whatever --train is
    for name, part in (("train", examples[args.valid:]), ("valid", examples[:args.valid])):
        (out / f"{name}.tsv").write_text("".join(f"{e.label}\t{e.a}\n" for e in part))
        print(f"{out / name}.tsv: {len(part)} examples")


if __name__ == "__main__":
    main()
