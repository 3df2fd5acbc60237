"""dnnlib: generic helpers (EasyDict, URL opening with cache, construction of classes by dotted name)."""
from . import util  # noqa: F401
from .util import (  # noqa: F401
    DownloadError,
    EasyDict,
    Logger,
    call_func_by_name,
    construct_class_by_name,
    format_time,
    get_obj_by_name,
    is_url,
    make_cache_dir_path,
    open_url,
)
