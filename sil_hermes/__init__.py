"""sil-guard for Hermes Agent: per-skill versions and rollback, skill edits turned into
guarded changes, and guarded skill calls.

``pip install 'sil-guard[hermes]'`` then ``hermes plugins enable sil --no-allow-tool-override``:
the plugin registers hooks only, no tool, and Hermes up to 0.21 asks every non-bundled
plugin whether it may replace built-in tools (an entry-point plugin has no manifest to say
it does not; the flag answers no without the prompt). Settings live in the ``sil:`` section
of Hermes' ``config.yaml`` (see ``sil_hermes._settings``); the store is the one every ``sil``
command reads (``sil_core.store.default_store_source``). Importing this package without
hermes-agent raises :class:`sil_core.MissingExtra` naming the extra; Hermes' own modules
are imported only when a name that needs them is used.
"""

from ._compat import require as _require

_require()

from .guarded_call import SkillGuard  # noqa: E402
from .plugin import register  # noqa: E402
from .skills import SkillConfigAdapter  # noqa: E402

__all__ = ("SkillConfigAdapter", "SkillGuard", "register")
