"""A WordPiece tokenizer trained on a corpus (the `tokenizers` library), saved as a BERT fast-tokenizer folder.

BERT's own pieces: the BERT normalizer (lowercase and strip accents unless cased), the BERT
pre-tokenizer (whitespace and punctuation), WordPiece with `##` continuations, and the
`[CLS] A [SEP] B [SEP]` template with segment ids. The corpus is streamed one document at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from spanqa.data.documents import CollectionError, iter_documents

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus_texts(paths: Iterable[str | Path], field: str = "text") -> Iterator[str]:
    """The non-empty document texts of a corpus, streamed; `CollectionError` when there are none."""
    seen = 0
    for doc in iter_documents(paths, field):
        if doc.text.strip():
            seen += 1
            yield doc.text
    if not seen:
        raise CollectionError(f"{', '.join(map(str, paths))}: the corpus has no text")


def train_wordpiece(paths: list[str | Path], out: str | Path, vocab_size: int = 30522, cased: bool = False,
                    field: str = "text", min_frequency: int = 2):
    """Train a WordPiece vocabulary on the corpus and save a `BertTokenizerFast` folder at `out`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (the special tokens)")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=not cased, lowercase=not cased)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(corpus_texts(paths, field), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS]:0 $A:0 [SEP]:0",
                                                       pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=not cased, unk_token="[UNK]", sep_token="[SEP]",
                             pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
    _save_atomically(fast, Path(out))
    return fast


def _save_atomically(tokenizer, out: Path) -> None:
    """Write into a staging folder, then rename: a killed run leaves no half-written tokenizer."""
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        tokenizer.save_pretrained(staging)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
