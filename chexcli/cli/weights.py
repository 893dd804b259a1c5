"""`chex weights`: import the official ChEX checkpoint, CheXzero or GPT-2 weights, and inspect bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Import official ChEX / CheXzero / GPT-2 weights into model bundles and inspect bundles.",
                  no_args_is_help=True)


def _log(message: str) -> None:
    typer.echo(message, err=True)


@app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="the released zip, the extracted chex_stage3 folder, or a checkpoint .pth"),
    out: Path = typer.Option(..., "--out", help="bundle folder to create (must not exist or be empty)"),
    clip_vocab: Optional[Path] = typer.Option(
        None, "--clip-vocab", help="bpe_simple_vocab_16e6.txt.gz, a folder holding it, or a Hugging Face CLIP tokenizer "
        "folder (default: clip_bpe/ next to SOURCE)"),
    lm_tokenizer: Optional[str] = typer.Option(
        None, "--lm-tokenizer", help="folder with the GPT-2 tokenizer of healx/gpt-2-pubmed-medium (vocab.json + "
        "merges.txt, config.json), or that hub name when online (default: the checkpoint's language_model_url)"),
    expect_sha256: Optional[str] = typer.Option(None, "--expect-sha256", help="refuse SOURCE unless its SHA-256 is this"),
    as_json: bool = typer.Option(False, "--json", help="print the bundle summary as JSON on stdout"),
) -> None:
    """Turn an official ChEX checkpoint into a model bundle (no pickled code is run).

    Every size is derived from the checkpoint's tensor shapes and stored config;
    every key and shape is checked. Prints the SHA-256 of SOURCE (of the chosen
    .pth for a folder).

    Example: chex weights import ~/Downloads/chex_stage3.zip --out models/chex --clip-vocab bpe_simple_vocab_16e6.txt.gz --lm-tokenizer gpt-2-pubmed-medium/
    """
    from chexcli.weights.info import bundle_info
    from chexcli.weights.official import import_official

    folder = import_official(source, out, clip_vocab=clip_vocab, lm_tokenizer=lm_tokenizer,
                             expect_sha256=expect_sha256, log=_log)
    _report(bundle_info(folder), as_json)


@app.command("import-chexzero")
def import_chexzero_cmd(
    file: Path = typer.Argument(..., help="CheXzero weights, e.g. best_64_5e-05_original_22000_0.864.pt"),
    out: Path = typer.Option(..., "--out", help="bundle folder to create (must not exist or be empty)"),
    clip_vocab: Optional[Path] = typer.Option(
        None, "--clip-vocab", help="bpe_simple_vocab_16e6.txt.gz (shipped with CLIP/CheXzero), a folder holding it, or "
        "a Hugging Face CLIP tokenizer folder"),
    lm_tokenizer: Optional[str] = typer.Option(
        None, "--lm-tokenizer", help="optional GPT-2 tokenizer folder (or hub name) for the sentence generator"),
    stage: int = typer.Option(3, "--stage", min=1, max=3,
                              help="3: stage-3 layout (post decoder + GPT-2 medium generator); 1: encoders + detector only"),
    seed: int = typer.Option(0, "--seed", help="seed of the fresh initialisation"),
    expect_sha256: Optional[str] = typer.Option(None, "--expect-sha256", help="refuse FILE unless its SHA-256 is this"),
    as_json: bool = typer.Option(False, "--json", help="print the bundle summary as JSON on stdout"),
) -> None:
    """Start a bundle from CheXzero's CLIP weights: image and prompt encoders filled, the rest freshly initialised.

    Example: chex weights import-chexzero best_64_5e-05_original_22000_0.864.pt --out models/chexzero-init --clip-vocab bpe_simple_vocab_16e6.txt.gz
    """
    from chexcli.model.config import ChexConfig
    from chexcli.weights.chexzero import import_chexzero
    from chexcli.weights.info import bundle_info

    config = None
    if stage < 3:
        config = ChexConfig(generator=None, n_post_decoder_layers=0 if stage == 1 else 3)
    folder = import_chexzero(file, out, clip_vocab=clip_vocab, lm_tokenizer=lm_tokenizer, config=config, seed=seed,
                             expect_sha256=expect_sha256, log=_log)
    _report(bundle_info(folder), as_json)


@app.command("import-gpt2")
def import_gpt2_cmd(
    source: str = typer.Argument(..., help="a Hugging Face GPT-2 folder (config.json, model.safetensors or "
                                           "pytorch_model.bin, vocab.json + merges.txt), or a hub name when online"),
    out: Path = typer.Option(..., "--out", help="bundle folder to create (must not exist or be empty)"),
    like: Optional[Path] = typer.Option(None, "--like", help="copy the other components and sizes from this bundle "
                                                             "(e.g. the CheXzero bundle); default: fresh, paper sizes"),
    seed: int = typer.Option(0, "--seed", help="seed of the fresh prefix MLP"),
    expect_sha256: Optional[str] = typer.Option(None, "--expect-sha256",
                                                help="refuse the weights file unless its SHA-256 is this"),
    as_json: bool = typer.Option(False, "--json", help="print the bundle summary as JSON on stdout"),
) -> None:
    """Turn a pretrained GPT-2 into a bundle that txtgen starts from (--init-generator), as the paper does.

    The generator gets the GPT-2's weights and tokenizer and a freshly initialised prefix MLP.

    Example: chex weights import-gpt2 healx/gpt-2-pubmed-medium --out bundles/gpt2-pubmed --like bundles/chexzero
    """
    from chexcli.weights.gpt2 import import_gpt2
    from chexcli.weights.info import bundle_info

    folder = import_gpt2(source, out, like=like, seed=seed, expect_sha256=expect_sha256, log=_log)
    _report(bundle_info(folder), as_json)


@app.command("info")
def info_cmd(
    bundle: Path = typer.Argument(..., help="model bundle folder"),
    as_json: bool = typer.Option(False, "--json", help="print JSON on stdout (for scripts)"),
) -> None:
    """Show a bundle's format, sizes, parameter counts per component and provenance.

    Example: chex weights info models/chex --json
    """
    from chexcli.weights.info import bundle_info

    _report(bundle_info(bundle), as_json)


def _report(info: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = info["config"]
    console.print(f"[bold]{info['bundle']}[/bold]  format {info['format']} v{info['format_version']}, "
                  f"{info['size_bytes'] / 1e6:,.1f} MB, tokenizers: "
                  + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["tokenizers"].items()))
    table = Table(title="configuration", show_header=True, header_style="bold")
    table.add_column("component")
    table.add_column("sizes")
    v, t = cfg["vision"], cfg["text"]
    table.add_row("model", f"d_model {cfg['d_model']}, heads {cfg['n_head']}")
    table.add_row("image encoder", f"ViT {v['image_size']}px patch {v['patch_size']}, width {v['width']}, "
                  f"{v['layers']} layers, {v['heads']} heads, out {v['output_dim']}")
    table.add_row("text encoder", f"width {t['width']}, {t['layers']} layers, {t['heads']} heads, "
                  f"context {t['context_length']}, vocab {t['vocab_size']}")
    table.add_row("detector", f"{cfg['detector']['layers']} layers, {cfg['detector']['multiregions']} regions per query")
    table.add_row("post decoder", f"{cfg['post_decoder']['layers']} layers, multibox drop {cfg['post_decoder']['multibox_drop']}")
    g = cfg["generator"]
    table.add_row("generator", "none" if g is None else
                  f"GPT-2 n_embd {g['n_embd']}, {g['n_layer']} layers, {g['n_head']} heads, vocab {g['vocab_size']}, "
                  f"{g['n_positions']} positions; prefix x{g['prefix_length_factor']}, offset {g['position_offset']}, "
                  f"max length {g['max_length']}")
    console.print(table)
    params = Table(title="parameters", show_header=True, header_style="bold")
    params.add_column("component")
    params.add_column("parameters", justify="right")
    for name, n in info["parameters"].items():
        params.add_row(name, f"{n:,}", style="bold" if name == "total_unique" else None)
    console.print(params)
    prov = info.get("provenance") or {}
    if prov:
        ptab = Table(title="provenance", show_header=False)
        ptab.add_column("key", style="bold")
        ptab.add_column("value", overflow="fold")
        for key, value in prov.items():
            ptab.add_row(key, value if isinstance(value, str) else json.dumps(value))
        console.print(ptab)
