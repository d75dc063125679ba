"""Regenerate `resources/samples/`: the sample text, and the config and tokenizer of the tiny BERT that
`miniglot --self-test` compresses (it draws the weights itself from a fixed seed; none are committed).

The committed files are what the app and the bundle use; this script documents how they were made
(`.venv/bin/python packaging/make_samples.py`; the WordPiece trainer may order equally frequent pieces
differently). The text is the made-up language of the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "resources" / "samples"
sys.path.insert(0, str(ROOT / "tests"))

from tiny import sentences, wordpiece_tokenizer  # noqa: E402

LINES = 600
VOCAB = 400
SEED = 0


def main() -> None:
    from transformers import BertConfig

    texts = sentences(LINES, SEED)
    SAMPLES.mkdir(parents=True, exist_ok=True)
    (SAMPLES / "sample.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    tokenizer = wordpiece_tokenizer(texts, vocab_size=VOCAB)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    folder = SAMPLES / "tiny-bert"
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"{folder}: {sum(p.stat().st_size for p in folder.iterdir()) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
