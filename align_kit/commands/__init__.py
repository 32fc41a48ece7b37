"""CLI command groups. Each module defines ``register(sub, data_sub)``: ``sub`` is the top-level
subparsers object, ``data_sub`` the subparsers of ``align-kit data``. A handler is stored with
``parser.set_defaults(func=handler)`` and receives the parsed ``argparse.Namespace``; it returns an exit code.
Add a module's name to ``MODULES`` to wire it in."""

MODULES = ("train", "datawork", "plan", "preference", "ppo", "export", "evaluation", "templates")
