"""`spanqa tokenizer train` and `spanqa pretrain`: adapt an encoder to a domain, or build one from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spanqa.cli.common import (
    Dropout,
    Force,
    KeepCheckpoints,
    Resume,
    TimeBudget,
    TrainPrecision,
    TrustRemoteCode,
    app,
    fail,
    run_training,
)

tokenizer_app = typer.Typer(no_args_is_help=True, help="Train WordPiece tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(corpus: list[Path] = typer.Argument(..., help="Files or folders: .txt .md .json(.gz) .jsonl .pdf"),
                    out: Path = typer.Option(..., help="Folder for the tokenizer (a BERT fast-tokenizer folder)"),
                    vocab_size: int = typer.Option(30522, help="Vocabulary size, special tokens included"),
                    cased: bool = typer.Option(False, "--cased", help="Keep case and accents (default: lowercase)"),
                    min_frequency: int = typer.Option(2, help="Ignore pieces seen fewer times"),
                    text_field: str = typer.Option("text", "--field", help="Text field of .json/.jsonl records")) -> None:
    """Train a WordPiece tokenizer (BERT normalizer and pre-tokenizer, [PAD] [UNK] [CLS] [SEP] [MASK])."""
    from spanqa.data.documents import CollectionError
    from spanqa.mlm.tokenizer import train_wordpiece

    try:
        tok = train_wordpiece(corpus, out, vocab_size, cased, text_field, min_frequency)
    except (CollectionError, ValueError) as e:
        fail(str(e))
    print(f"tokenizer with {len(tok):,} tokens written to {out}\n"
          f"  pretrain: spanqa pretrain {' '.join(map(str, corpus))} --from-scratch --tokenizer {out}")


@app.command("pretrain")
def pretrain_cmd(
    corpus: list[str] = typer.Argument(..., help="Files or folders: .txt .md .json(.gz) (records or SQuAD contexts) .jsonl .pdf"),
    recipe: Optional[str] = typer.Option(None, help="Named recipe (e.g. pretrain-scratch)"),
    config: Optional[str] = typer.Option(None, help="YAML file with the same keys as the flags"),
    model: Optional[str] = typer.Option(None, help="Encoder to continue pretraining (default: packaged all-MiniLM-L6-v2)"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="A new BERT of --size for --tokenizer"),
    size: Optional[str] = typer.Option(None, help="From scratch: tiny (2x128) | mini (4x256) | small (4x512) | medium (8x512)"),
    pre_ln: bool = typer.Option(False, "--pre-ln", help="From scratch: LayerNorm before each sublayer"),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer folder (default: the model's own)"),
    text_field: Optional[str] = typer.Option(None, "--field", help="Text field of .json/.jsonl records"),
    output_dir: Optional[str] = typer.Option(None, help="Where the masked-LM model is written (default runs/mlm)"),
    max_seq_length: Optional[int] = typer.Option(None, help="Tokens per packed sequence (default 128)"),
    mlm_probability: Optional[float] = None,
    whole_word_mask: bool = typer.Option(False, "--whole-word-mask", help="Mask whole words, not single pieces"),
    valid_fraction: Optional[float] = typer.Option(None, help="Share of the corpus held out (default 0.05)"),
    epochs: Optional[float] = None, max_steps: Optional[int] = None,
    time_budget: TimeBudget = None,
    dropout: Dropout = None,
    batch_size: Optional[int] = None, grad_accum: Optional[int] = None,
    learning_rate: Optional[float] = None, warmup_ratio: Optional[float] = None,
    weight_decay: Optional[float] = None, seed: Optional[int] = None,
    precision: TrainPrecision = None,
    save_steps: Optional[int] = None, eval_steps: Optional[int] = None, log_steps: Optional[int] = None,
    resume: Resume = False, force: Force = False, keep_checkpoints: KeepCheckpoints = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Masked-LM pretraining: continue an encoder on domain text, or train a new BERT from scratch."""
    from spanqa.mlm.task import build_pretrain_config, pretrain

    cfg, metrics = run_training(build_pretrain_config, pretrain, recipe, config, dict(locals()))
    if metrics:
        print(f"valid_loss={metrics['valid_loss']:.3f}  masked_accuracy={metrics['masked_accuracy']:.3f}  "
              f"perplexity={metrics['perplexity']:.1f}\n"
              f"masked-LM model written to {cfg.output_dir}\n"
              f"  fine-tune a reader: spanqa train --model {cfg.output_dir} --recipe cpu-fast")
