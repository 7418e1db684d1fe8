"""datablame.store: runs, scores and flags in any SQLAlchemy database, the review actions, the cleaned export.
Names are imported on first use."""

from datablame.influence.exports import lazy_exports

_EXPORTS = {
    "Database": "db", "open_db": "db", "default_url": "db",
    "scan_workdir": "scanning", "ScanResult": "scanning", "ensure_dataset": "scans", "find_dataset": "scans",
    "list_flags": "flags", "set_status": "flags", "relabel": "flags", "add_flag": "flags", "flag_examples": "flags",
    "page_flags": "flags", "set_status_matching": "flags", "undo": "flags", "history": "flags", "StaleFlag": "flags",
    "FlagFilter": "flags",
    "export": "export", "ExportReport": "export", "temporary_postgres": "testing",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
