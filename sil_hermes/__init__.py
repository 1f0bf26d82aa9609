"""sil-guard for Hermes Agent: per-skill versions and rollback, skill edits turned into
guarded changes, and guarded skill calls.

``pip install 'sil-guard[hermes]'`` then ``hermes plugins enable sil``. Importing this
package without hermes-agent raises :class:`sil_core.MissingExtra` naming the extra;
Hermes' own modules are imported only when a name that needs them is used.
"""

from ._compat import require as _require

_require()

from .guarded_call import SkillGuard  # noqa: E402
from .plugin import register  # noqa: E402
from .skills import SkillConfigAdapter  # noqa: E402

__all__ = ("SkillConfigAdapter", "SkillGuard", "register")
