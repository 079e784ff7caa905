"""Translate D2L's four example sentences with a trained run and print D2L's sentence BLEU (k=2).

    python experiments/d2l_examples.py --workdir runs/d2l-seq2seq [--beam 1]
"""

import argparse
from pathlib import Path

from jaxseq.metrics import bleu
from jaxseq.tasks.translate import translate_texts
from jaxseq.workdir import Workdir

ENGLISH = ["go .", "i lost .", "he's calm .", "i'm home ."]
FRENCH = ["va !", "j'ai perdu .", "il est calme .", "je suis chez moi ."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--beam", type=int, default=1)
    args = parser.parse_args()
    outputs = translate_texts(Workdir(args.workdir), ENGLISH, beam=args.beam)
    for src, out, ref in zip(ENGLISH, outputs, FRENCH):
        print(f"{src} => {out}, bleu {bleu(out, ref, k=2):.3f}")


if __name__ == "__main__":
    main()
