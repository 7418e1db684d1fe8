"""datablame.index: training vectors on disk, FAISS indexes over them, and explanations found in them.
Names are imported on first use."""

from datablame.influence.exports import lazy_exports

_EXPORTS = {
    "index_workdir": "explain", "Explainer": "explain", "Explanation": "explain", "Neighbour": "explain",
    "default_method": "explain", "VectorIndex": "search", "IndexMeta": "search", "VectorStore": "vectors",
    "compute_vectors": "vectors", "compute_vector_sets": "vectors", "vector_sets": "vectors",
    "finalize_vectors": "vectors", "build_indexes": "explain",
    "run_vectors": "jobs", "run_finalize": "jobs", "Part": "shards",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
