"""CLI command groups, one module each. A module defines ``register(sub, data_sub)``: ``sub`` is the top-level
subparsers object, ``data_sub`` the subparsers of ``align-kit data``. A handler is stored with
``parser.set_defaults(func=handler)`` and receives the parsed ``argparse.Namespace``; it returns an exit code.

``MODULES`` is derived from this folder: adding ``commands/<name>.py`` wires it in; one that fails to import
or defines no ``register`` stops the CLI with its error (never skipped)."""

import pkgutil

MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
