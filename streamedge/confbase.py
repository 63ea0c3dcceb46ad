"""Building blocks of the configuration models.

Every config model derives from :class:`Model`: unknown keys are errors and
models are frozen. Fields that may carry secrets or site-specific addresses are
typed :data:`EnvStr`: ``${NAME}`` and ``${NAME:-default}`` in them are replaced
from the environment, or from a file ``NAME`` in ``$CREDENTIALS_DIRECTORY``
(systemd credentials). Relative paths (:data:`RelPath`) resolve against the
directory of the file that contains them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Model(BaseModel):
    """Base of every config model: strict keys, immutable, documented fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def _context(info: ValidationInfo) -> dict[str, Any]:
    ctx = info.context
    return ctx if isinstance(ctx, dict) else {}


def substitute_env(text: str, env: dict[str, str], creds_dir: str | None) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in ``text``.

    Raises:
        ValueError: a variable is unset and has no default.
    """

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if creds_dir:
            secret = Path(creds_dir) / name
            if secret.is_file():
                return secret.read_text(encoding="utf-8").strip()
        if default is not None:
            return default
        msg = f"environment variable {name} is not set and has no default"
        raise ValueError(msg)

    return _ENV_RE.sub(repl, text)


def env_substituted(value: object, info: ValidationInfo) -> object:
    """Substitute ``${NAME}`` in a string value (other values pass through)."""
    if not isinstance(value, str) or "${" not in value:
        return value
    ctx = _context(info)
    env = ctx.get("env")
    if env is None:
        env = dict(os.environ)
    return substitute_env(value, env, env.get("CREDENTIALS_DIRECTORY"))


def _resolve_path(value: object, info: ValidationInfo) -> object:
    if isinstance(value, str):
        value = env_substituted(value, info)
    if isinstance(value, str | Path):
        path = Path(value).expanduser()
        base = _context(info).get("base_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return path
    return value


EnvStr = Annotated[str, BeforeValidator(env_substituted)]
"""A string in which ``${NAME}`` is substituted from the environment."""

RelPath = Annotated[Path, BeforeValidator(_resolve_path)]
"""A path; relative paths resolve against the config file's directory."""
