"""sil-guard core."""
