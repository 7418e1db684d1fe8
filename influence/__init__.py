"""datablame.influence: the engine, usable alone from Python (no FAISS, SQL or terminal).

Data (``load_examples``), training and workdirs (``train``, ``init_workdir``, ``Workdir``), the registered
attribution methods (``method_names``, ``build_method``; ``register`` a ``MethodSpec`` of your own), the parts
they are made of (``gradient_computer``, ``make_projector``, ``make_curvature``), their two sides' settings
(``VectorSettings``, ``QuerySettings``, ``MethodSettings``) and label-issue ranking (``rank_label_issues``).
Names are imported on first use.
"""

from .exports import lazy_exports

_EXPORTS = {
    "DatablameError": "errors",
    "Examples": "data", "load_examples": "data", "read_table": "tables",
    "Checkpoint": "workdir", "Config": "workdir", "Workdir": "workdir", "weights_digest": "workdir",
    "TrainSettings": "train", "train": "train", "init_workdir": "train",
    "MethodSpec": "registry", "register": "registry", "method_names": "registry", "method_spec": "registry",
    "BuildContext": "build", "build_method": "build",
    "MethodSettings": "settings", "VectorSettings": "settings", "QuerySettings": "settings",
    "TracIn": "methods", "InfluenceFunctions": "methods", "Representer": "methods", "TRAK": "trak",
    "compute_train_vectors": "methods", "scores": "methods",
    "GradientComputer": "gradients", "gradient_computer": "gradients", "Curvature": "curvature",
    "make_curvature": "curvature", "LissaConfig": "lissa", "make_projector": "sketch",
    "rank_label_issues": "detect", "cross_validated_probabilities": "detect",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
