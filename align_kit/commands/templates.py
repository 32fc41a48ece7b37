"""``align-kit data check-template MODEL_OR_TOKENIZER``: is the training template the served format?"""

from __future__ import annotations

from pathlib import Path

from align_kit.errors import ConfigError


def register(sub, data_sub) -> None:
    c = data_sub.add_parser("check-template", help="compare the training chat template with the model's own "
                            "(or the vendor's reference) over a battery of conversations; exit 2 on a difference")
    c.add_argument("model", help="model or tokenizer folder, Hub id, or builtin:tiny-llama")
    c.add_argument("--family", default="auto", help="llama, qwen, mistral, glm (needed for a folder without "
                   "config.json)")
    c.add_argument("--template", default="auto", help="force a template variant (see README)")
    c.add_argument("--override-template", action="store_true", help="train with align_kit's template even "
                   "when the tokenizer ships one (the check then shows what that changes)")
    c.add_argument("--trust-remote-code", action="store_true")
    c.set_defaults(func=cmd_check_template)


def load_for_check(args):
    """The tokenizer as training would prepare it (template, stop and pad tokens)."""
    from align_kit.config import ModelArgs
    from align_kit.models import BUILTIN, load_tokenizer

    margs = ModelArgs(name_or_path=args.model, family=args.family, template=args.template,
                      override_template=args.override_template, trust_remote_code=args.trust_remote_code)
    if args.model == BUILTIN or (Path(args.model) / "config.json").is_file() or not Path(args.model).is_dir():
        return load_tokenizer(margs)
    # a tokenizer folder without a model config: the family comes from --family
    if args.family == "auto":
        raise ConfigError(f"{args.model} has no config.json to tell the model family: pass --family "
                          "(llama, qwen, mistral or glm)")
    from transformers import AutoTokenizer

    from align_kit.families import apply_family
    from align_kit.models import resolve_family

    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    family, template = resolve_family(margs, "", tok)
    apply_family(tok, template, family, override_template=args.override_template)
    tok.align_kit_template = template.name
    return tok


def cmd_check_template(args) -> int:
    from align_kit.template_check import check_template

    tok = load_for_check(args)
    report = check_template(tok, args.model)
    print(f"training template: {tok.align_kit_template}"
          + (" (the tokenizer's own, kept)" if getattr(tok, "align_kit_own_template", None) and not
             args.override_template else ""))
    for line in report.lines():
        print(line)
    if not report.checked:
        print("not verified: no reference to compare with")
        return 0
    return 0 if report.ok else 2
