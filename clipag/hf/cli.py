"""``clipag export``: registered by :mod:`clipag.cli`; nothing heavy is imported until the command runs."""

from __future__ import annotations

import argparse

__all__ = ["register_export"]


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, push_to_hub

    result = export(args.name, args.out, fmt=args.format, download_root=args.download_root)
    measured = result.measured
    if args.format == "transformers":
        f = measured["features"]
        print(f"wrote {result.folder} (transformers CLIPModel): get_image_features vs encode_image max |diff| "
              f"{f['image_max_abs']:.1e}, get_text_features vs encode_text {f['text_max_abs']:.1e}")
        for name, differing in measured["tokenizers"].items():
            print(f"  {name}: ids equal clipag.tokenize on {measured['texts'] - len(differing)} of "
                  f"{measured['texts']} awkward strings" + (f" (differs on {differing})" if differing else ""))
    else:
        m = measured["open_clip"]
        print(f"wrote {result.folder} (open_clip hf-hub layout): open_clip's reader vs clipag max |diff| "
              f"{max(m['image_max_abs'], m['text_max_abs']):.1e}")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(result.folder, args.push_to_hub, private=args.private)}")
    return 0


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model as a transformers CLIPModel folder or an open_clip hf-hub folder",
                       description="Write NAME (anything clipag.load takes) to the new folder OUT, with a model card "
                                   "stating the source, its sha256, the licence and the measured equivalence.")
    p.add_argument("name", help="registry name (e.g. ViT-B/32), hf-hub:ORG/REPO, a folder or a checkpoint file")
    p.add_argument("out", help="a new (or empty) folder")
    p.add_argument("--format", choices=("transformers", "open_clip"), default="transformers",
                   help="transformers: CLIPModel/CLIPProcessor/CLIPTokenizer files (needs clipag[hf]); "
                        "open_clip: open_clip_config.json + open_clip_model.safetensors (default: transformers)")
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="also upload the folder to this Hub model repo (created if missing; uses your HF token)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(func=cmd_export)
