"""Tiny real models for fast tests: a made-up language, tokenizers trained on it, models from configs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

SYLLABLES = ["ka", "li", "mu", "to", "ra", "ne", "si", "po", "ha", "wu", "għ", "ż", "ċ", "ja", "bo", "de"]


def sentences(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic sentences of a made-up language with a Zipf-like word distribution."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    weights = [1 / (i + 1) for i in range(len(words))]
    out = []
    for _ in range(n):
        chosen = rng.choices(words, weights, k=rng.randint(3, 18))
        out.append(" ".join(chosen).capitalize() + rng.choice([".", "!", "?", ","]))
    return out


def write_corpus(path: Path, n: int = 400, seed: int = 0) -> Path:
    path.write_text("\n".join(sentences(n, seed)) + "\n", encoding="utf-8")
    return path


def wordpiece_tokenizer(texts: list[str], vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def unigram_tokenizer(texts: list[str], vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                           unk_token="<unk>"))
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def tiny_model_dir(folder: Path, family: str = "bert", mlm_head: bool = True, layers: int = 4,
                   hidden: int = 64, heads: int = 4, ffn: int = 128, seed: int = 0) -> Path:
    """Save a tiny random model of `family` (bert | xlm-roberta) with a trained tokenizer to `folder`."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertModel,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
        XLMRobertaModel,
    )

    texts = sentences(400, seed)
    torch.manual_seed(seed)
    if family == "bert":
        tokenizer = wordpiece_tokenizer(texts)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=160,
                            pad_token_id=tokenizer.pad_token_id)
        model = BertForMaskedLM(config) if mlm_head else BertModel(config, add_pooling_layer=False)
    else:
        tokenizer = unigram_tokenizer(texts)
        config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=162,
                                  pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = XLMRobertaForMaskedLM(config) if mlm_head else XLMRobertaModel(config, add_pooling_layer=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def st_encode(folder: Path, texts: list[str], prompt: str = ""):
    """SentenceTransformer(folder).encode(texts) in a fresh process, as a tensor."""
    import torch

    code = ("import json, sys; from sentence_transformers import SentenceTransformer; "
            "m = SentenceTransformer(sys.argv[1], device='cpu', trust_remote_code=False); "
            "texts = json.loads(sys.argv[2]); "
            "print(json.dumps(m.encode(texts, prompt=sys.argv[3] or None, convert_to_numpy=True).tolist()))")
    done = subprocess.run([sys.executable, "-c", code, str(folder), json.dumps(texts), prompt], check=True,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                          timeout=300)
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
