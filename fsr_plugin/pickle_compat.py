"""Loading network pickles written by older versions of the plugin.

A persistent class's pickle holds the whole source of its module, which the loader executes as a fresh top-level
module (torch_utils.persistence). The versions of fsr_plugin/heads.py that introduced `--fsr-top-wta` imported
`winner_take_all` relatively (`from .wta import ...`), which has no package there, so their snapshots failed to
load with "attempted relative import with no known parent package". The import hook below rewrites that line of
an embedded source to the absolute import; it is registered when fsr_plugin is imported, which legacy.py does for
every configured plugin before it unpickles.
"""

from torch_utils import persistence

__all__ = ['absolute_plugin_imports']

_RELATIVE_TO_ABSOLUTE = {
    'from .wta import winner_take_all': 'from fsr_plugin.wta import winner_take_all',
}


def absolute_plugin_imports(meta):
    """Persistence import hook: meta (with module_src) -> meta with the plugin's known relative imports made
    absolute. Sources without them pass through unchanged."""
    src = meta.get('module_src')
    if isinstance(src, str) and any(old in src for old in _RELATIVE_TO_ABSOLUTE):
        for old, new in _RELATIVE_TO_ABSOLUTE.items():
            src = src.replace(old, new)
        meta['module_src'] = src
    return meta


persistence.import_hook(absolute_plugin_imports)  # once: a module body runs once per process
