"""``align-kit export`` (merge LoRA, save safetensors + tokenizer + card) and ``align-kit push``."""

from __future__ import annotations

from pathlib import Path

from align_kit.errors import ConfigError


def register(sub, data_sub) -> None:
    p = sub.add_parser("export", help="merge a run's LoRA adapter into the base weights and save a "
                                      "safetensors model folder with tokenizer, chat template and model card")
    p.add_argument("run_dir", help="output folder of a finished stage (holds the adapter or the model)")
    p.add_argument("--out", required=True, help="folder to write the standalone model to")
    p.add_argument("--base-model", help="base model path or id (default: the one recorded in adapter_config.json)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (default: the base model's)")
    p.add_argument("--chat-template", metavar="FILE", help="a .jinja chat template to store with the tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--model-name", help="name shown in the model card (default: the --out folder name)")
    p.add_argument("--license", default="apache-2.0", help="licence in the card's metadata (default apache-2.0)")
    p.add_argument("--no-card", action="store_true", help="do not write README.md and data_cards/")
    p.set_defaults(func=_export)

    q = sub.add_parser("push", help="upload an exported model folder to the Hugging Face Hub (private by default)",
                       epilog="Uploaded: *.safetensors, config.json, generation_config.json, adapter_config.json, "
                              "tokenizer files, chat template, README.md and data_cards/*.md. Everything else "
                              "(checkpoints, optimizer states, logs, manifest.json) stays local. The token comes "
                              "from HF_TOKEN or `hf auth login`; align_kit never prints or stores it.")
    q.add_argument("out_dir", help="folder written by `align-kit export`")
    q.add_argument("repo_id", help="user-or-org/name")
    q.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    q.add_argument("--dry-run", action="store_true", help="list what would be uploaded and what stays local")
    q.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="also upload this file (relative to the folder, e.g. LICENSE); repeatable")
    # No --token option on purpose: a token on the command line ends up in shell history and process
    # listings. huggingface_hub reads HF_TOKEN or the login saved by `hf auth login`.
    q.set_defaults(func=_push)


def _export(args) -> int:
    from align_kit.export import export_model
    from align_kit.modelcard import card_from_run

    template = None
    if args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise ConfigError(f"--chat-template {path}: no such file")
        template = path.read_text(encoding="utf-8")
    info = export_model(args.run_dir, args.out, base_model=args.base_model, dtype=args.dtype,
                        overwrite=args.overwrite, chat_template=template)
    print(f"exported {'merged LoRA' if info['merged_lora'] else 'model'} ({info['dtype']}) to {info['out']}")
    if args.no_card:
        return 0
    card = card_from_run(args.run_dir, args.out, args.model_name or Path(args.out).name, info["base_model"],
                         license=args.license)
    print(f"model card: {card}")
    return 0


def _push(args) -> int:
    from align_kit.hub import push

    result = push(args.out_dir, args.repo_id, private=not args.public, dry_run=args.dry_run, include=args.include)
    total = sum(size for _, size in result["files"])
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(result['files'])} files ({total / 1e6:.2f} MB) to {args.repo_id} "
          f"({'private' if result['private'] else 'public'}):")
    for name, size in result["files"]:
        print(f"  + {name} ({size} bytes)")
    for name, reason in result["skipped"]:
        print(f"  - {name}: not uploaded ({reason})")
    if "README.md" not in {name for name, _ in result["files"]}:
        print("note: no README.md model card in the folder (run `align-kit export` without --no-card)")
    if result["uploaded"]:
        print(f"commit {result['commit']}: {result['url']}")
    return 0
