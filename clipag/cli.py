"""The ``clipag`` command: models, download, import, run (and generate/prior/export, see their modules)."""

from __future__ import annotations

import argparse
import os
import sys

from . import cli_options, registry
from .hub import WEIGHTS_NAME, cache_root, model_dir

__all__ = ["main", "build_parser"]


def _cached(entry: registry.ModelEntry, download_root: str | None) -> bool:
    if entry.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        config = "config.json" if entry.layout == "transformers" else "open_clip_config.json"
        return isinstance(try_to_load_from_cache(entry.hf_repo, config), str)
    return (model_dir(entry.name, download_root) / WEIGHTS_NAME).exists()


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_models(args: argparse.Namespace) -> int:
    from .adapters.vqgan_clip.registry import VQGANS, cached_vqgan

    _print_table(("name", "architecture", "activation", "cached", "source"),
                 [(e.name, e.arch, "QuickGELU" if e.quick_gelu else "GELU", "yes" if _cached(e, args.download_root)
                   else "-", e.source) for e in registry.REGISTRY.values()])
    print(f"\ncache: {cache_root(args.download_root)}   (CLIPAG_CACHE; Hub repos use the Hugging Face cache)")
    if args.verbose:
        for entry in registry.REGISTRY.values():
            print(f"\n{entry.name}: {entry.description}\n  embedding space: {entry.embedding_space}\n"
                  f"  threat model: {entry.threat_model}\n  licence: {entry.license}\n"
                  f"  format: {entry.layout}")
    print("\nNo robust counterpart (not loadable by these names): "
          + ", ".join(registry.OPENAI_NAMES_WITHOUT_COUNTERPART))
    print("\nVQGANs for `clipag vqgan --vqgan NAME` (`clipag download NAME`):\n")
    _print_table(("name", "download", "cached", "what"),
                 [(v.name, v.approx_size, "yes" if cached_vqgan(v.name, args.download_root) else "-", v.description)
                  for v in VQGANS.values()])
    return 0


def _unknown_name(name: str) -> RuntimeError:
    """A name that is neither a CLIP, a VQGAN, an hf-hub: id nor a path: every name these commands take."""
    import difflib

    from .adapters.vqgan_clip.registry import VQGANS

    error = registry.not_found_error(name)
    close = difflib.get_close_matches(name, [*registry.available_models(), *VQGANS], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return RuntimeError(f"{error}; VQGANs (for clipag vqgan) = {list(VQGANS)}; or an hf-hub:ORG/NAME id{hint} "
                        "(`clipag models` lists them all)")


def cmd_download(args: argparse.Namespace) -> int:
    from .adapters.vqgan_clip.registry import VQGANS, fetch_vqgan
    from .weights import load_entry, resolve

    if args.name in VQGANS:  # a VQGAN for `clipag vqgan` / VQGAN-CLIP
        print(fetch_vqgan(args.name, args.download_root)[1].parent)
        return 0
    entry = registry.get_entry(args.name)
    if entry is not None and not entry.hf_repo:
        load_entry(entry, args.download_root)
        print(model_dir(entry.name, args.download_root))
    else:
        try:
            resolved = resolve(args.name, args.download_root)
        except RuntimeError as e:
            if str(e).startswith(f"Model {args.name} not found"):  # a typo: list the VQGAN names too
                raise _unknown_name(args.name) from None
            raise
        print(f"{resolved.source}: {sum(t.numel() for t in resolved.state_dict.values()):,} parameters cached")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .adapters.vqgan_clip.registry import VQGANS, import_vqgan
    from .weights import import_checkpoint

    if args.name in VQGANS:
        print(import_vqgan(args.name, args.file, args.config, args.download_root))
        return 0
    if args.name.startswith("hf-hub:"):  # a Hub-layout folder (e.g. a clipag.finetune export) copied here
        from .weights import install_in_hub_cache

        print(install_in_hub_cache(args.file, args.name.removeprefix("hf-hub:")))
        return 0
    entry = registry.get_entry(args.name)
    if entry is None:
        raise _unknown_name(args.name)
    if entry.hf_repo:
        raise SystemExit(f"{args.name} comes from hf-hub:{entry.hf_repo}; copy a Hugging Face cache instead "
                         "(see README, Offline use)")
    print(import_checkpoint(entry, args.file, args.download_root))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .run import run_script

    if args.precision:
        os.environ["CLIPAG_PRECISION"] = args.precision
    modes = {name: "on" for name in args.standin} | {name: "off" for name in args.no_standin}
    run_script(args.script, args.args, model=args.model, device=args.device, standin_modes=modes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli_options.ArgumentParser(prog="clipag", description="CLIP with Perceptually Aligned Gradients.")
    parser.add_argument("--download-root", default=None, help="cache folder (default: $CLIPAG_CACHE or "
                                                                "~/.cache/clipag)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registry and what is cached")
    p.add_argument("-v", "--verbose", action="store_true", help="also print each model's description")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("download", help="fetch, verify and cache a model (registry name, hf-hub: id or VQGAN name)",
                       description="Fetch a model into the cache, check its size and checksum, and convert it to "
                                   "safetensors once: a CLIP registry name (`clipag models`), an hf-hub:ORG/NAME id, "
                                   "or a VQGAN name for `clipag vqgan`. Prints where it is cached.")
    p.add_argument("name", help="e.g. ViT-B/32 (CLIPAG), FARE2-ViT-L/14, hf-hub:chs20/fare2-clip, "
                                "vqgan_imagenet_f16_16384")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("import", help="verify, convert and cache a checkpoint you downloaded yourself",
                       description="Put a file you downloaded yourself (say, CLIPAG_ViTB32.pt from Zenodo on "
                                   "another machine) into the cache under a model's name, as `clipag download` "
                                   "would: its size and checksum are checked, a pickle is read without running "
                                   "code and converted to safetensors. Afterwards the name loads offline.")
    p.add_argument("name", help="registry name (e.g. ViT-B/32), or hf-hub:ORG/NAME for a Hub-layout folder")
    p.add_argument("file", help="the downloaded file (e.g. CLIPAG_ViTB32.pt), or a folder with "
                                "open_clip_config.json + open_clip_model.safetensors")
    p.add_argument("--config", default=None, metavar="YAML", help="VQGAN names: the model's taming yaml "
                                                                    "(needed unless already in the cache)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("run", help="run an unmodified script with `import clip` resolving to clipag",
                       description="Run SCRIPT as `python SCRIPT ARGS...` would, with `import clip` (and `from CLIP "
                                   "import clip`) resolving to clipag, so its clip.load gets a robust CLIP. "
                                   "Stand-ins replace diffvg (pydiffvg), taming-transformers and cog's old API when "
                                   "they are not installed; --device sends hard-coded CUDA elsewhere.")
    p.add_argument("--model", default=None, help="replace every clip.load name, and every Hub id given to "
                                                 "transformers' CLIP from_pretrained (registry name, hf-hub: id, path)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="weight precision off the CPU (default fp16, as OpenAI)")
    p.add_argument("--device", default=None, help="send the script's hard-coded CUDA requests (torch.device('cuda'), "
                                                  ".cuda(), device='cuda', .to('cuda')) to this device, e.g. cpu, mps")
    p.add_argument("--standin", action="append", default=[], metavar="NAME",
                   help="always use clipag's stand-in for NAME, even if the real package is installed")
    p.add_argument("--no-standin", action="append", default=[], metavar="NAME",
                   help="never use clipag's stand-in for NAME (default: used only when the real one is missing)")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list:
    """Sub-commands that live with their feature (generation, priors, adapters)."""
    from .adapters.clipdraw.cli import register_draw
    from .adapters.clipstyler.cli import register_style
    from .adapters.vqgan_clip.cli import register_vqgan
    from .generation_cli import register_generate, register_prior
    from .hf.cli import register_export

    return [register_generate, register_prior, register_draw, register_vqgan, register_style, register_export]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run" and os.path.isfile(args.script):
        return args.func(args)  # the script's own errors keep their traceback, as under `python script.py`
    from .extras import MissingExtra, extra_for, install_hint

    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except MissingExtra as e:
        print(f"clipag {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # an extra's module imported where no check was made: still no traceback
        extra = extra_for(e.name or "")
        if extra is None:
            raise
        print(f"clipag {args.command}: error: {e.name} is missing, from clipag's [{extra}] extra; "
              f"{install_hint(extra)}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, ValueError) as e:  # clipag's errors say what happened and what to do
        print(f"clipag: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
