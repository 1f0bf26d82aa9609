"""Internal helpers of sil_core. Not public API: names here may change without notice."""
